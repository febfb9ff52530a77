"""Test support shared by unit, integration and benchmark code (generators, builders); no tests here."""
