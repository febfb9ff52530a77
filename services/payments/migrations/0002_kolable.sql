-- Kolable refund/re-buy reconciliation (war-room seed 000): read model and lookup, written in the
-- same transactions as the KolableOrder events (stream `kolable-{order_id}`), which stay the source
-- of truth. The scorecard is computed from these rows instead of replaying every stream.

-- One row per imported order: its current classification and its latest decision (as JSON of the
-- domain's KolableClassification and RefundDecision).
CREATE TABLE kolable_orders (
    order_id       text PRIMARY KEY,
    student_id     text,
    course_id      text,
    status         text,
    classification jsonb,
    decision       jsonb,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kolable_orders_status_idx ON kolable_orders (status);

-- Student -> orders, for re-buy detection: a new row can be the re-buy of an older order of the
-- same student. student_key is the student id trimmed and case-folded (ids are often emails).
CREATE TABLE kolable_students (
    student_key text NOT NULL,
    order_id    text NOT NULL,
    PRIMARY KEY (student_key, order_id)
);
CREATE UNIQUE INDEX kolable_students_order_idx ON kolable_students (order_id);
