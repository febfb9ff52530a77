"""The orders service: orders, bills, customer standing, staff schedules and the prepayment policy."""
