-- The merchant's record (seed 五: a merchant-fault cancellation is recorded on the merchant): one row
-- per merchant-fault cancellation and per compensation the platform owes a merchant (a late
-- customer-fault cancellation of an unprepaid order). Written in the same transaction as the
-- MerchantFaultRecorded / MerchantCompensationGranted events of the order's transaction stream,
-- which stay the source of truth.
CREATE TABLE payments_merchant_records (
    merchant_id                  text        NOT NULL,
    order_id                     text        NOT NULL,
    kind                         text        NOT NULL,   -- fault_cancellation | compensation_owed
    reason_code                  text        NOT NULL,
    seconds_before_service_start int         NOT NULL,
    amount                       bigint,
    currency                     text,
    policy_version               text,
    at                           timestamptz NOT NULL,
    PRIMARY KEY (merchant_id, order_id, kind)
);
