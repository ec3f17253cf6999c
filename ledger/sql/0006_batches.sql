-- Several requests in one round trip and one transaction. Under load the store sends the reads
-- (and the writes) that queued while its calls were busy together: the per-call cost
-- (round trip, transaction start and commit, the client's pool work) is paid once per batch
-- instead of once per request. Each item keeps its own outcome: it runs in its own
-- subtransaction, so an error in one item rolls back that item only and is returned for it.

-- p is a JSON array of snapshot parameters; the result is the array of their snapshots.
CREATE FUNCTION ledger.snapshot_all(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_item jsonb;
  v_out jsonb[] := '{}';
BEGIN
  FOR v_item IN SELECT x FROM jsonb_array_elements(p) x LOOP
    BEGIN
      v_out := v_out || ledger.snapshot(v_item);
    EXCEPTION WHEN OTHERS THEN
      v_out := v_out || jsonb_build_object('error', SQLSTATE, 'message', SQLERRM);
    END;
  END LOOP;
  RETURN to_jsonb(v_out);
END $$;

-- p is a JSON array of apply payloads; the result is the array of their replies.
-- Before any item runs, every customer the batch admits is locked in ascending id order, then
-- every audit head it appends to in ascending terminal order. Batches running at once thus
-- take their locks in one global order and cannot deadlock, whatever order their items are in;
-- the per-item locks that ledger.apply takes afterwards are already held.
CREATE FUNCTION ledger.apply_all(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[] := ARRAY(
    SELECT DISTINCT x::bigint FROM jsonb_array_elements(p) i,
                                   jsonb_array_elements_text(i->'admitted') x ORDER BY 1);
  v_terminals text[] := ARRAY(
    SELECT DISTINCT i->'key'->>'terminal_id' FROM jsonb_array_elements(p) i ORDER BY 1);
  v_set text := set_config('app.customer_ids', v_ids::text, true);
  v_item jsonb;
  v_out jsonb[] := '{}';
BEGIN
  PERFORM 1 FROM ledger.customers WHERE customer_id = ANY (v_ids)
    ORDER BY customer_id FOR UPDATE;
  INSERT INTO ledger.audit_heads
    SELECT t, 0, repeat('0', 64) FROM unnest(v_terminals) t ORDER BY t
    ON CONFLICT DO NOTHING;
  PERFORM 1 FROM ledger.audit_heads WHERE terminal_id = ANY (v_terminals)
    ORDER BY terminal_id FOR UPDATE;
  FOR v_item IN SELECT x FROM jsonb_array_elements(p) x LOOP
    BEGIN
      v_out := v_out || ledger.apply(v_item);
    EXCEPTION WHEN OTHERS THEN
      v_out := v_out || jsonb_build_object('error', SQLSTATE, 'message', SQLERRM);
    END;
  END LOOP;
  RETURN to_jsonb(v_out);
END $$;

REVOKE ALL ON FUNCTION ledger.snapshot_all(jsonb), ledger.apply_all(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.snapshot_all(jsonb), ledger.apply_all(jsonb) TO ledger_switch;

-- Every entry sums to zero per currency, checked once per INSERT statement over the legs it
-- inserted (the deferred row trigger it replaces ran a query per leg at commit, under whatever
-- row-level security scope the transaction had last, which in a batch is another item's). An
-- entry's legs are inserted by one statement; legs added later must balance among themselves,
-- so the sum per entry stays zero either way.
DROP TRIGGER postings_balanced ON ledger.postings;
DROP FUNCTION ledger.check_entry_balanced();
CREATE FUNCTION ledger.check_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_entry bigint := (SELECT entry_id FROM new_legs GROUP BY entry_id, currency
                      HAVING sum(amount_minor) <> 0 LIMIT 1);
BEGIN
  IF v_entry IS NOT NULL THEN
    RAISE EXCEPTION 'journal entry % does not sum to zero per currency', v_entry
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER postings_balanced AFTER INSERT ON ledger.postings
  REFERENCING NEW TABLE AS new_legs
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.check_entries_balanced();

-- The entry, its postings, the balances, the card, the reversal mark and the customer versions
-- in one statement: they touch different rows, all already locked through the customers.
-- Balances move by primary key (a join here hashed every house account the policy shows, a cost
-- that grew with the fleet); an account the admitted customers cannot see is not updated, and
-- the count of updated rows (returned) says so.
CREATE OR REPLACE FUNCTION ledger.write_decision(p jsonb, p_ids bigint[], p_entry bigint,
                                                 p_at timestamptz) RETURNS bigint
  LANGUAGE plpgsql AS $$
DECLARE
  v_customer bigint := (p->>'customer_id')::bigint;
  v_moved bigint;
BEGIN
  WITH x AS (
    SELECT * FROM jsonb_to_recordset(p->'postings')
      AS x(account_id bigint, customer_id bigint, amount_minor bigint, currency text)),
  entry AS (
    INSERT INTO ledger.journal_entries
      SELECT p_entry, v_customer, p->'key'->>'terminal_id', p->>'kind',
             (p->>'business_date')::date, p_at
       WHERE p_entry IS NOT NULL),
  legs AS (
    INSERT INTO ledger.postings
      SELECT p_entry, x.account_id, x.customer_id, x.amount_minor, x.currency FROM x),
  balances AS (
    UPDATE ledger.accounts a
       SET balance_minor = a.balance_minor
                           + (SELECT x.amount_minor FROM x WHERE x.account_id = a.account_id)
     WHERE a.account_id = ANY (ARRAY(SELECT account_id FROM x)) RETURNING 1),
  card AS (
    UPDATE ledger.cards SET status = p->'card'->>'status',
        pin_tries = (p->'card'->>'pin_tries')::integer,
        usage_day = (p->'card'->>'usage_day')::date,
        usage_amount_minor = (p->'card'->>'usage_amount_minor')::bigint,
        usage_count = (p->'card'->>'usage_count')::integer
      WHERE jsonb_typeof(p->'card') = 'object'
        AND card_id = (p->'card'->>'card_id')::bigint AND customer_id = v_customer),
  mark AS (
    INSERT INTO ledger.reversals
      SELECT v_customer, p->'reversal'->>'terminal_id', p->'reversal'->>'transmission_time',
             p->'reversal'->>'stan', p->'reversal'->>'message_class',
             p->'reversal'->>'state', p_at
       WHERE jsonb_typeof(p->'reversal') = 'object'),
  versions AS (
    UPDATE ledger.customers SET version = version + 1 WHERE customer_id = ANY (p_ids))
  SELECT count(*) INTO v_moved FROM balances;
  IF v_moved <> jsonb_array_length(p->'postings') THEN
    RAISE EXCEPTION 'posting to an account outside the admitted customers'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN v_moved;
END $$;
