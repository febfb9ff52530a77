-- Timers are claimed with a lease instead of a row lock held while the handler runs:
-- the handler's own transaction may delete or re-arm the same timer (e.g. a cancellation
-- cancels the payment-deadline timer), which would wait forever on that row lock.
ALTER TABLE timers ADD COLUMN locked_until timestamptz;
