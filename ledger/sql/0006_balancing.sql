-- Terminal balancing and the business day: every 0500 a terminal sent with the host's figures
-- beside it, and the days an operator closed with their totals frozen. The switch writes
-- balancings only through ledger.record_balancing; days are closed by the owner's tool.

-- The business day starts at this UTC time of day (the switch's [ledger] business_day_cutover
-- must be the same): the database decides by its own clock when a day is over.
ALTER TABLE ledger.policy ADD COLUMN business_day_cutover time NOT NULL DEFAULT '00:00';

-- One terminal's figures for one business day and currency, as 0500 carries them (F74-F80
-- counts, F86-F89 amounts in minor units, F97 signed: debits - debit reversals - (credits -
-- credit reversals)).
CREATE TYPE ledger.day_figures AS (
  credits bigint, credit_reversals bigint, debits bigint, debit_reversals bigint,
  transfers bigint, transfer_reversals bigint, inquiries bigint,
  credits_minor bigint, credit_reversals_minor bigint, debits_minor bigint,
  debit_reversals_minor bigint, net_minor bigint
);

-- One row per 0500 received and answered (a refused 0500 leaves none). `differences` names the
-- wire fields that differ (empty when balanced); the cassettes are the F124 counters, as
-- jsonb arrays of {cassette_no, denomination_minor, dispensed, rejected, remaining}.
CREATE TABLE ledger.balancings (
  balancing_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  terminal_id text NOT NULL REFERENCES ledger.terminals,
  business_date date NOT NULL,
  currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  transmission_time text NOT NULL,
  stan text NOT NULL,
  terminal_figures ledger.day_figures NOT NULL,
  host_figures ledger.day_figures NOT NULL,
  terminal_cassettes jsonb NOT NULL,
  host_cassettes jsonb NOT NULL,
  result text NOT NULL CHECK (result IN ('balanced', 'imbalance')),
  differences text[] NOT NULL,
  received_at timestamptz NOT NULL,
  CHECK ((result = 'balanced') = (cardinality(differences) = 0))
);
CREATE INDEX balancings_terminal_day ON ledger.balancings (terminal_id, business_date);

-- A closed business day: no posting may carry its date any more.
CREATE TABLE ledger.closed_days (
  business_date date PRIMARY KEY,
  cutover time NOT NULL,
  closed_at timestamptz NOT NULL,
  closed_by text NOT NULL
);

-- A closed day's totals, frozen at close from the postings: per terminal, currency and
-- transaction type, approved count and amount, the reversals of them booked that day, net.
CREATE TABLE ledger.day_totals (
  business_date date NOT NULL REFERENCES ledger.closed_days,
  terminal_id text NOT NULL,
  currency char(3) NOT NULL,
  kind text NOT NULL CHECK (kind IN ('withdrawal', 'transfer', 'inquiry')),
  approved_count bigint NOT NULL,
  approved_minor bigint NOT NULL,
  reversal_count bigint NOT NULL,
  reversed_minor bigint NOT NULL,
  net_minor bigint NOT NULL CHECK (net_minor = approved_minor - reversed_minor),
  PRIMARY KEY (business_date, terminal_id, currency, kind)
);

-- A closed day's cassette positions at its start and its end, from the loads and the notes
-- moved (rejected notes are known only from 0500s: see the day's balancings).
CREATE TABLE ledger.day_cassettes (
  business_date date NOT NULL REFERENCES ledger.closed_days,
  terminal_id text NOT NULL,
  cassette_no smallint NOT NULL,
  at_open boolean NOT NULL,
  currency char(3) NOT NULL,
  denomination_minor bigint NOT NULL,
  load_seq integer NOT NULL,
  loaded_notes integer NOT NULL,
  dispensed_notes integer NOT NULL,
  PRIMARY KEY (business_date, terminal_id, cassette_no, at_open)
);

DO $$
DECLARE
  v_table text;
BEGIN
  FOREACH v_table IN ARRAY ARRAY['balancings', 'closed_days', 'day_totals', 'day_cassettes'] LOOP
    EXECUTE format('CREATE TRIGGER no_update_delete BEFORE UPDATE OR DELETE ON ledger.%I
                      FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change()', v_table);
    EXECUTE format('CREATE TRIGGER no_truncate BEFORE TRUNCATE ON ledger.%I
                      FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change()', v_table);
    EXECUTE format('ALTER TABLE ledger.%I ENABLE ROW LEVEL SECURITY', v_table);
    EXECUTE format('REVOKE ALL ON ledger.%I FROM ledger_switch', v_table);
  END LOOP;
END $$;

-- A day's requests, read by business date when a terminal balances and when the day closes:
-- the date grows with the insertion order, so a BRIN index costs almost nothing per insert.
CREATE INDEX transactions_business_date ON ledger.transactions USING brin (business_date);
