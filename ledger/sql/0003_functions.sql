-- The two round trips of a request: ledger.snapshot (read) and ledger.apply (write).
-- Decisions are made in Python on the snapshot; apply re-checks under lock that the snapshot
-- is still current (customer versions) and otherwise returns a fresh one to decide again.

-- Owner lookups run as the owner: they reveal only a customer id, which the caller needs to
-- know which customer to admit for row-level security. Functions here are PL/pgSQL, whose
-- plans are cached per session (a SQL-language function is parsed again at every call).
CREATE FUNCTION ledger.card_owner(p_pan_hash bytea) RETURNS bigint
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN (SELECT customer_id FROM ledger.cards WHERE pan_hash = p_pan_hash);
END $$;

CREATE FUNCTION ledger.account_owner(p_account_number text) RETURNS bigint
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN (SELECT customer_id FROM ledger.accounts WHERE account_number = p_account_number);
END $$;

REVOKE ALL ON FUNCTION ledger.card_owner(bytea), ledger.account_owner(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.card_owner(bytea), ledger.account_owner(text)
  TO ledger_switch;


-- Everything a decision needs, as seen by the admitted customers. p_customer is the card's
-- customer (0 when the card is unknown).
CREATE FUNCTION ledger.state(p_ids bigint[], p_customer bigint, p jsonb) RETURNS jsonb
  LANGUAGE plpgsql STABLE AS $$
DECLARE
  k jsonb := p->'key';
  o jsonb := p->'original';
  v_original jsonb;
  v_terminal jsonb;
  v_cash bigint;
BEGIN
  SELECT jsonb_build_object('outcome', outcome, 'result', result) INTO v_original
    FROM ledger.requests
   WHERE o IS NOT NULL AND customer_id = p_customer
     AND terminal_id = o->>'terminal_id' AND transmission_time = o->>'transmission_time'
     AND stan = o->>'stan' AND message_class = o->>'message_class';
  SELECT jsonb_build_object('terminal_id', terminal_id, 'status', status,
                            'cash_account_id', cash_account_id), cash_account_id
    INTO v_terminal, v_cash
    FROM ledger.terminals WHERE terminal_id = k->>'terminal_id';
  RETURN jsonb_build_object(
    'customer_id', p_customer,
    'versions', (SELECT coalesce(jsonb_object_agg(customer_id::text, version), '{}')
                   FROM ledger.customers WHERE customer_id = ANY (p_ids)),
    'card', (SELECT to_jsonb(c) - 'pan_hash' FROM ledger.cards c
              WHERE c.pan_hash = decode(p->>'pan_hash', 'hex') AND c.customer_id = p_customer),
    'links', (SELECT coalesce(jsonb_object_agg(ca.type_code, ca.account_id), '{}')
                FROM ledger.card_accounts ca JOIN ledger.cards c USING (card_id)
               WHERE c.pan_hash = decode(p->>'pan_hash', 'hex')),
    'accounts', (SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.account_id), '[]')
                   FROM ledger.accounts a
                  WHERE a.account_id IN (
                          SELECT account_id FROM ledger.accounts
                           WHERE customer_id = p_customer AND p_customer <> 0
                          UNION ALL SELECT v_cash
                          UNION ALL SELECT account_id FROM ledger.accounts
                           WHERE account_number = p->>'to_account'
                          UNION ALL SELECT (x->>'account_id')::bigint
                            FROM jsonb_array_elements(v_original->'result'->'postings') x)),
    'to_account_owner', CASE WHEN p->>'to_account' IS NOT NULL
                          THEN ledger.account_owner(p->>'to_account') END,
    'terminal', v_terminal,
    'answered', (SELECT r.result FROM ledger.requests r
                  WHERE r.customer_id = p_customer AND r.terminal_id = k->>'terminal_id' AND r.transmission_time = k->>'transmission_time'
     AND r.stan = k->>'stan' AND r.message_class = k->>'message_class'),
    'original', v_original,
    'self_reversal', (SELECT state FROM ledger.reversals
                       WHERE customer_id = p_customer AND terminal_id = k->>'terminal_id'
                         AND transmission_time = k->>'transmission_time'
                         AND stan = k->>'stan' AND message_class = k->>'message_class'),
    'original_reversal', (SELECT state FROM ledger.reversals
                           WHERE o IS NOT NULL AND customer_id = p_customer
                             AND terminal_id = o->>'terminal_id'
                             AND transmission_time = o->>'transmission_time'
                             AND stan = o->>'stan' AND message_class = o->>'message_class')
  );
END $$;

-- The customers a request admits: the card's, an allowed transfer destination's, and those
-- whose accounts the original of a reversal touched.
CREATE FUNCTION ledger.admitted_for(p jsonb, p_customer bigint) RETURNS bigint[]
  LANGUAGE plpgsql AS $$
DECLARE
  v_ids bigint[] := ARRAY[p_customer];
  v_other bigint;
  o jsonb := p->'original';
BEGIN
  IF p_customer = 0 THEN
    RETURN '{}';
  END IF;
  IF p->>'to_account' IS NOT NULL THEN
    v_other := ledger.account_owner(p->>'to_account');
  END IF;
  IF v_other IS NOT NULL AND v_other <> 0 AND coalesce((p->>'admit_other')::boolean, false) THEN
    v_ids := v_ids || v_other;
  END IF;
  PERFORM set_config('app.customer_ids', v_ids::text, true);
  IF o IS NOT NULL THEN
    v_ids := v_ids || ARRAY(
      SELECT DISTINCT (x->>'customer_id')::bigint
        FROM ledger.requests r, jsonb_array_elements(r.result->'postings') x
       WHERE r.customer_id = p_customer AND r.terminal_id = o->>'terminal_id' AND r.transmission_time = o->>'transmission_time'
         AND r.stan = o->>'stan' AND r.message_class = o->>'message_class'
         AND (x->>'customer_id')::bigint <> 0);
  END IF;
  RETURN ARRAY(SELECT DISTINCT unnest(v_ids) ORDER BY 1);
END $$;

CREATE FUNCTION ledger.snapshot(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_customer bigint := coalesce(ledger.card_owner(decode(p->>'pan_hash', 'hex')), 0);
  v_ids bigint[] := ledger.admitted_for(p, v_customer);
BEGIN
  PERFORM set_config('app.customer_ids', v_ids::text, true);
  RETURN ledger.state(v_ids, v_customer, p) || jsonb_build_object('admitted', to_jsonb(v_ids));
END $$;

CREATE FUNCTION ledger.append_audit(
  p_terminal text, p_customer bigint, p_at timestamptz, p_entry bigint, p_body text
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_seq bigint;
  v_prev text;
  v_hash text;
BEGIN
  SELECT seq, hash INTO v_seq, v_prev FROM ledger.audit_heads
   WHERE terminal_id = p_terminal FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO ledger.audit_heads VALUES (p_terminal, 0, repeat('0', 64))
      ON CONFLICT DO NOTHING;
    SELECT seq, hash INTO v_seq, v_prev FROM ledger.audit_heads
     WHERE terminal_id = p_terminal FOR UPDATE;
  END IF;
  v_seq := v_seq + 1;
  v_hash := encode(sha256(convert_to(
    v_prev || E'\n' || p_terminal || E'\n' || v_seq::text || E'\n' || p_body, 'UTF8')), 'hex');
  INSERT INTO ledger.audit VALUES (p_terminal, v_seq, p_customer, p_at, p_entry, p_body,
                                   v_prev, v_hash);
  UPDATE ledger.audit_heads SET seq = v_seq, hash = v_hash WHERE terminal_id = p_terminal;
  RETURN v_seq;
END $$;

CREATE FUNCTION ledger.post_entry(p jsonb, p_at timestamptz) RETURNS bigint
  LANGUAGE plpgsql AS $$
DECLARE
  v_entry bigint := nextval('ledger.entry_ids');
  v_posting record;
BEGIN
  INSERT INTO ledger.journal_entries
    VALUES (v_entry, (p->>'customer_id')::bigint, p->'key'->>'terminal_id', p->>'kind',
            (p->>'business_date')::date, p_at);
  INSERT INTO ledger.postings
    SELECT v_entry, x.account_id, x.customer_id, x.amount_minor, x.currency
      FROM jsonb_to_recordset(p->'postings')
           AS x(account_id bigint, customer_id bigint, amount_minor bigint, currency text);
  -- One primary-key update per posting (two, usually), in the order given.
  FOR v_posting IN
    SELECT * FROM jsonb_to_recordset(p->'postings') AS r(account_id bigint, amount_minor bigint)
  LOOP
    UPDATE ledger.accounts SET balance_minor = balance_minor + v_posting.amount_minor
     WHERE account_id = v_posting.account_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'posting to an account outside the admitted customers'
        USING ERRCODE = 'insufficient_privilege';
    END IF;
  END LOOP;
  RETURN v_entry;
END $$;

-- One decided request, in one transaction. Returns {"status": "done" | "answered" | "stale"}.
CREATE FUNCTION ledger.apply(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  v_customer bigint := (p->>'customer_id')::bigint;
  v_ids bigint[] := ARRAY(SELECT jsonb_array_elements_text(p->'admitted')::bigint ORDER BY 1);
  k jsonb := p->'key';
  v_at timestamptz := (p->>'recorded_at')::timestamptz;
  v_stale boolean;
  v_stored jsonb;
  v_entry bigint;
  v_result jsonb;
BEGIN
  PERFORM set_config('app.customer_ids', v_ids::text, true);
  -- Customers locked in ascending id order: opposite-direction transfers cannot deadlock.
  SELECT bool_or(c.version <> (p->'versions'->>c.customer_id::text)::bigint) INTO v_stale
    FROM (SELECT customer_id, version FROM ledger.customers
           WHERE customer_id = ANY (v_ids) ORDER BY customer_id FOR UPDATE) c;
  SELECT r.result INTO v_stored FROM ledger.requests r
   WHERE r.customer_id = v_customer AND r.terminal_id = k->>'terminal_id' AND r.transmission_time = k->>'transmission_time'
     AND r.stan = k->>'stan' AND r.message_class = k->>'message_class';
  IF FOUND THEN
    RETURN jsonb_build_object('status', 'answered', 'result', v_stored);
  END IF;
  IF v_stale THEN
    RETURN jsonb_build_object('status', 'stale',
      'state', ledger.state(v_ids, v_customer, p->'lookup') || jsonb_build_object(
                 'admitted', to_jsonb(v_ids)));
  END IF;
  IF jsonb_array_length(p->'postings') > 0 THEN
    v_entry := ledger.post_entry(p, v_at);
  END IF;
  v_result := p->'result' || jsonb_build_object('entry_id', v_entry);
  INSERT INTO ledger.requests VALUES (v_customer, k->>'terminal_id', k->>'transmission_time',
      k->>'stan', k->>'message_class', p->'result'->>'outcome', v_result, v_entry, v_at)
    ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN
    -- Only requests without a customer get here: nothing serialised the two copies.
    RETURN jsonb_build_object('status', 'answered', 'result', (
      SELECT r.result FROM ledger.requests r
       WHERE r.customer_id = v_customer AND r.terminal_id = k->>'terminal_id' AND r.transmission_time = k->>'transmission_time'
     AND r.stan = k->>'stan' AND r.message_class = k->>'message_class'));
  END IF;
  IF jsonb_typeof(p->'card') = 'object' THEN
    UPDATE ledger.cards SET status = p->'card'->>'status',
        pin_tries = (p->'card'->>'pin_tries')::integer,
        usage_day = (p->'card'->>'usage_day')::date,
        usage_amount_minor = (p->'card'->>'usage_amount_minor')::bigint,
        usage_count = (p->'card'->>'usage_count')::integer
      WHERE card_id = (p->'card'->>'card_id')::bigint AND customer_id = v_customer;
  END IF;
  IF jsonb_typeof(p->'reversal') = 'object' THEN
    INSERT INTO ledger.reversals VALUES (v_customer, p->'reversal'->>'terminal_id',
        p->'reversal'->>'transmission_time', p->'reversal'->>'stan',
        p->'reversal'->>'message_class', p->'reversal'->>'state', v_at);
  END IF;
  UPDATE ledger.customers SET version = version + 1 WHERE customer_id = ANY (v_ids);
  PERFORM ledger.append_audit(k->>'terminal_id', v_customer, v_at, v_entry, p->>'audit');
  RETURN jsonb_build_object('status', 'done', 'result', v_result);
END $$;

REVOKE ALL ON FUNCTION ledger.snapshot(jsonb), ledger.apply(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.snapshot(jsonb), ledger.apply(jsonb) TO ledger_switch;
