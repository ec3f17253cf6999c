-- Every function of the ledger, in one repeatable file: `migrate` re-applies it after the
-- versioned table migrations, so each function has exactly one definition to read.
--
-- The switch's role executes ledger.read_batch, ledger.post_batch, ledger.terminal_keys,
-- ledger.set_session_keys and ledger.schema_state (and the operations functions at the end of
-- this file), and nothing else: it owns no table privilege.
-- The functions derive the customer from the card's PAN hash themselves, build the postings from
-- the operation (never from the caller), refuse what the switch would never ask for, and write
-- the journal record and its audit block.

-- Functions are PL/pgSQL where they run statements per request (their plans are cached per
-- session), and SQL where they are one expression: a SQL function the planner inlines costs
-- nothing of its own, but one it does not inline is planned again at every call. It inlines a
-- function whose body is no more volatile than declared and uses each argument once (or only
-- cheap ones more than once); pg_stat_statements shows any that is not (a plan per call).

-- What post_batch hands the cash functions (0004_cash) about each request of its batch, after
-- its one statement has judged and written them. Dropped first (with the functions that take it,
-- created again below) so that this file stays the one definition of it.
DROP TYPE IF EXISTS ledger.written_request CASCADE;
CREATE TYPE ledger.written_request AS (
  position integer, status text, transaction_id bigint, customer_id bigint, move_minor bigint);

-- ATM cash (0004_cash), read by result_of below.

-- The notes one transaction moved (positive: dispensed; negative: put back), in slot order.
CREATE OR REPLACE FUNCTION ledger.notes_of(p_transaction_id bigint) RETURNS jsonb
  LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'cassette_no', movement.cassette_no, 'load_seq', movement.load_seq,
                   'denomination_minor', movement.denomination_minor, 'notes', movement.notes)
                 ORDER BY movement.cassette_no), '[]')
            FROM ledger.note_movements movement
           WHERE movement.transaction_id = p_transaction_id);
END $$;

-- One field of the canonical text a leaf hashes: "name=value", or "name" alone for NULL.
CREATE OR REPLACE FUNCTION ledger.leaf_field(name text, value text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(name || '=' || value, name)
$$;

-- The SHA-256 leaf of one transaction: every column but the leaf itself, then its legs in
-- account order (ledger.leg_line lines, or NULL for none). ledger/journal.py computes the same
-- bytes; docs/audit.md specifies them. One argument per column, each used once, so the planner
-- inlines it into the statement that writes the row.
CREATE OR REPLACE FUNCTION ledger.leaf(
  transaction_id bigint, customer_id bigint, terminal_id text, transmission_time text,
  stan text, message_class text, kind text, outcome text, response_code text,
  amount_minor bigint, currency text, requested_minor bigint, requested_currency text,
  ledger_balance_minor bigint, available_balance_minor bigint, business_date date,
  recorded_at timestamptz, pan_masked text, mti text, processing_code text, rrn text,
  original_transmission_time text, original_stan text, original_message_class text,
  reversal_state text, lane integer, block_seq bigint, legs text
) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT sha256(convert_to(concat_ws(E'\n',
    'kiosk-switch leaf v1',
    ledger.leaf_field('transaction_id', transaction_id::text),
    ledger.leaf_field('customer_id', customer_id::text),
    ledger.leaf_field('terminal_id', terminal_id),
    ledger.leaf_field('transmission_time', transmission_time),
    ledger.leaf_field('stan', stan),
    ledger.leaf_field('message_class', message_class),
    ledger.leaf_field('kind', kind),
    ledger.leaf_field('outcome', outcome),
    ledger.leaf_field('response_code', response_code),
    ledger.leaf_field('amount_minor', amount_minor::text),
    ledger.leaf_field('currency', currency),
    ledger.leaf_field('requested_minor', requested_minor::text),
    ledger.leaf_field('requested_currency', requested_currency),
    ledger.leaf_field('ledger_balance_minor', ledger_balance_minor::text),
    ledger.leaf_field('available_balance_minor', available_balance_minor::text),
    ledger.leaf_field('business_date', business_date::text),
    ledger.leaf_field('recorded_at_us',
                      (extract(epoch FROM recorded_at) * 1000000)::bigint::text),
    ledger.leaf_field('pan_masked', pan_masked),
    ledger.leaf_field('mti', mti),
    ledger.leaf_field('processing_code', processing_code),
    ledger.leaf_field('rrn', rrn),
    ledger.leaf_field('original_transmission_time', original_transmission_time),
    ledger.leaf_field('original_stan', original_stan),
    ledger.leaf_field('original_message_class', original_message_class),
    ledger.leaf_field('reversal_state', reversal_state),
    ledger.leaf_field('lane', lane::text),
    ledger.leaf_field('block_seq', block_seq::text),
    legs), 'UTF8'))
$$;

-- The leaf of a transaction row (post_opening builds one; so does an auditor's rehash). Its
-- argument was once named otherwise, and CREATE OR REPLACE cannot rename one.
DROP FUNCTION IF EXISTS ledger.leaf(ledger.transactions, text);
CREATE OR REPLACE FUNCTION ledger.leaf(txn ledger.transactions, legs text) RETURNS bytea
  LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT ledger.leaf(txn.transaction_id, txn.customer_id, txn.terminal_id,
    txn.transmission_time, txn.stan, txn.message_class, txn.kind, txn.outcome,
    txn.response_code, txn.amount_minor, txn.currency, txn.requested_minor,
    txn.requested_currency, txn.ledger_balance_minor, txn.available_balance_minor,
    txn.business_date, txn.recorded_at, txn.pan_masked, txn.mti, txn.processing_code, txn.rrn,
    txn.original_transmission_time, txn.original_stan, txn.original_message_class,
    txn.reversal_state, txn.lane, txn.block_seq, legs)
$$;

-- One leg of a leaf: "leg=account:customer:amount:currency". (format() would make it stable,
-- and an immutable function calling a stable one is not inlined.)
CREATE OR REPLACE FUNCTION ledger.leg_line(account_id bigint, customer_id bigint,
                                           amount_minor bigint, currency text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT 'leg=' || account_id::text || ':' || customer_id::text || ':' || amount_minor::text
         || ':' || currency
$$;

-- The hash of a block: the previous block's hash, the block's place and time, then its leaves.
CREATE OR REPLACE FUNCTION ledger.block_hash(prev_hash bytea, lane integer, seq bigint,
                                             transactions integer, recorded_at timestamptz,
                                             leaves bytea)
  RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT sha256(prev_hash || convert_to(
    E'kiosk-switch block v1\nlane=' || lane::text || E'\nseq=' || seq::text
    || E'\ntransactions=' || transactions::text || E'\nrecorded_at_us='
    || (extract(epoch FROM recorded_at) * 1000000)::bigint::text || E'\n', 'UTF8') || leaves)
$$;

-- Locks a free lane's head (the backend's own lane when it is free, else the next free one, so
-- concurrent calls rarely wait on one head) and returns the lane, the next block's number and
-- the hash it follows. Taken last in every writer, after customers and house accounts.
CREATE OR REPLACE FUNCTION ledger.open_block(OUT lane integer, OUT seq bigint,
                                             OUT prev_hash bytea)
  LANGUAGE plpgsql AS $$
DECLARE
  v_lanes integer := (SELECT count(*) FROM ledger.audit_heads);
  v_own integer := pg_backend_pid() % v_lanes;
BEGIN
  SELECT head.lane, head.seq + 1, head.hash INTO lane, seq, prev_hash
    FROM ledger.audit_heads head
   ORDER BY (head.lane + v_lanes - v_own) % v_lanes LIMIT 1 FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    SELECT head.lane, head.seq + 1, head.hash INTO lane, seq, prev_hash
      FROM ledger.audit_heads head
     WHERE head.lane = v_own FOR UPDATE;
  END IF;
END $$;

-- Appends the block of `p_count` transactions written with (p_lane, p_seq), whose leaves in
-- transaction id order are `p_leaves`, and moves the head.
CREATE OR REPLACE FUNCTION ledger.close_block(p_lane integer, p_seq bigint, p_prev_hash bytea,
                                              p_at timestamptz, p_count integer, p_leaves bytea)
  RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_hash bytea;
BEGIN
  IF p_count = 0 THEN
    RETURN;
  END IF;
  v_hash := ledger.block_hash(p_prev_hash, p_lane, p_seq, p_count, p_at, p_leaves);
  INSERT INTO ledger.audit_blocks VALUES (p_lane, p_seq, p_at, p_count, p_prev_hash, v_hash);
  UPDATE ledger.audit_heads SET seq = p_seq, hash = v_hash WHERE lane = p_lane;
END $$;

-- What a repeat gets back, and what the store answers from: the stored outcome of one row, with
-- the notes it moved (0004_cash), so a repeated approval names the mix that was dispensed. SQL,
-- inlined where it is called with a row variable. (Dropped first: its argument was once named
-- otherwise.)
DROP FUNCTION IF EXISTS ledger.result_of(ledger.transactions);
CREATE OR REPLACE FUNCTION ledger.result_of(txn ledger.transactions) RETURNS jsonb
  LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'transaction_id', txn.transaction_id, 'outcome', txn.outcome, 'kind', txn.kind,
    'amount_minor', txn.amount_minor, 'currency', txn.currency,
    'ledger_balance_minor', txn.ledger_balance_minor,
    'available_balance_minor', txn.available_balance_minor,
    'business_date', txn.business_date, 'notes', ledger.notes_of(txn.transaction_id))
$$;

-- The reads of a batch of requests, in their order: one round trip, one statement and no locks.
-- For each request, everything a decision about it needs, as of now: the card (found by its PAN
-- hash, which only the HSM can compute), its customer's accounts, the terminal, the request's
-- stored outcome if it was answered, its original (for a reversal) and the reversal marks on
-- both keys. `xmin` of the card and of each account lets post_batch tell whether the state a
-- decision was made on is still current. `admitted`: the customers post_batch would lock for
-- it. Every lookup is a LATERAL subquery or a subquery on a key, planned as post_batch's are.
CREATE OR REPLACE FUNCTION ledger.read_batch(
  pan_hashes bytea[], terminal_ids text[], transmission_times text[], stans text[],
  message_classes text[], original_transmission_times text[], original_stans text[],
  original_message_classes text[], to_accounts text[]
) RETURNS SETOF jsonb
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
  SET enable_memoize = off SET join_collapse_limit = 1 SET from_collapse_limit = 1
  SET jit = off SET plan_cache_mode = force_generic_plan AS $$
BEGIN
  RETURN QUERY
    SELECT jsonb_build_object(
      'customer_id', owner.customer_id,
      'admitted', to_jsonb(admitted.customer_ids),
      'card', card.fields,
      'links', (SELECT coalesce(jsonb_object_agg(card_account.type_code,
                                                 card_account.account_id), '{}')
                  FROM ledger.card_accounts card_account
                 WHERE card_account.card_id = card.card_id),
      'accounts', (SELECT coalesce(jsonb_agg(to_jsonb(account) || jsonb_build_object(
                            'xmin', account.xmin::text::bigint) ORDER BY account.account_id),
                            '[]')
                     FROM ledger.accounts account
                    WHERE account.account_id = ANY (ARRAY(
                            SELECT own.account_id FROM ledger.accounts own
                             WHERE own.customer_id = owner.customer_id AND owner.customer_id <> 0
                            UNION ALL SELECT term.cash_account_id
                            UNION ALL SELECT destination.account_id
                             WHERE destination.customer_id = ANY (admitted.customer_ids)
                            UNION ALL SELECT unnest(original.account_ids)))),
      'to_account_owner', destination.customer_id,
      'terminal', CASE WHEN term.terminal_id IS NOT NULL THEN jsonb_build_object(
                    'terminal_id', term.terminal_id, 'status', term.status,
                    'cash_account_id', term.cash_account_id,
                    'cassettes', term.cassettes) END,
      'answered', (SELECT ledger.result_of(txn) FROM ledger.transactions txn
                    WHERE (txn.customer_id, txn.terminal_id, txn.transmission_time, txn.stan,
                           txn.message_class)
                        = (owner.customer_id, request.terminal_id, request.transmission_time,
                           request.stan, request.message_class)),
      'original', CASE WHEN original.transaction_id IS NOT NULL THEN jsonb_build_object(
                    'outcome', original.outcome,
                    'result', original.result || jsonb_build_object('postings', original.legs))
                  END,
      'self_reversal', (SELECT reversal.reversal_state FROM ledger.transactions reversal
                         WHERE (reversal.customer_id, reversal.terminal_id,
                                reversal.original_transmission_time, reversal.original_stan,
                                reversal.original_message_class)
                             = (owner.customer_id, request.terminal_id,
                                request.transmission_time, request.stan, request.message_class)
                           AND reversal.reversal_state IS NOT NULL),
      'original_reversal', (SELECT reversal.reversal_state FROM ledger.transactions reversal
                             WHERE request.original_stan IS NOT NULL
                               AND (reversal.customer_id, reversal.terminal_id,
                                    reversal.original_transmission_time, reversal.original_stan,
                                    reversal.original_message_class)
                                 = (owner.customer_id, request.terminal_id,
                                    request.original_transmission_time, request.original_stan,
                                    request.original_message_class)
                               AND reversal.reversal_state IS NOT NULL))
      FROM unnest(pan_hashes, terminal_ids, transmission_times, stans, message_classes,
                  original_transmission_times, original_stans, original_message_classes,
                  to_accounts) WITH ORDINALITY
           AS request(pan_hash, terminal_id, transmission_time, stan, message_class,
                      original_transmission_time, original_stan, original_message_class,
                      to_account, position)
      LEFT JOIN LATERAL (SELECT card.customer_id, card.card_id,
                                to_jsonb(card) - 'pan_hash' || jsonb_build_object(
                                  'xmin', card.xmin::text::bigint) AS fields
                           FROM ledger.cards card WHERE card.pan_hash = request.pan_hash
                          LIMIT 1) card
        ON true
      -- The house (0) when the card is unknown.
      CROSS JOIN LATERAL (SELECT coalesce(card.customer_id, 0) AS customer_id) owner
      -- The terminal's cassettes in slot order, as a subquery of this statement (a function
      -- per request would start a plan of its own per request).
      LEFT JOIN LATERAL (SELECT terminal.terminal_id, terminal.status, terminal.cash_account_id,
                                (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                          'cassette_no', cassette.cassette_no,
                                          'currency', cassette.currency,
                                          'denomination_minor', cassette.denomination_minor,
                                          'remaining_notes', cassette.remaining_notes,
                                          'load_seq', cassette.load_seq)
                                          ORDER BY cassette.cassette_no), '[]')
                                   FROM ledger.cassettes cassette
                                  WHERE cassette.terminal_id = terminal.terminal_id) AS cassettes
                           FROM ledger.terminals terminal
                          WHERE terminal.terminal_id = request.terminal_id
                          LIMIT 1) term ON true
      LEFT JOIN LATERAL (SELECT account.account_id, account.customer_id
                           FROM ledger.accounts account
                          WHERE account.account_number = request.to_account
                          LIMIT 1) destination ON true
      -- A reversal's original, its postings and the other customers they touch.
      LEFT JOIN LATERAL (SELECT original.transaction_id, original.outcome,
                                ledger.result_of(original) AS result,
                                legs.legs, legs.account_ids, legs.customer_ids
                           FROM ledger.transactions original
                          CROSS JOIN LATERAL (
                            SELECT coalesce(jsonb_agg(jsonb_build_object(
                                     'account_id', posting.account_id,
                                     'customer_id', posting.customer_id,
                                     'amount_minor', posting.amount_minor,
                                     'currency', posting.currency)
                                     ORDER BY posting.amount_minor), '[]') AS legs,
                                   array_agg(posting.account_id) AS account_ids,
                                   array_agg(posting.customer_id) AS customer_ids
                              FROM ledger.postings posting
                             WHERE posting.transaction_id = original.transaction_id) legs
                          WHERE request.original_stan IS NOT NULL AND owner.customer_id <> 0
                            AND (original.customer_id, original.terminal_id,
                                 original.transmission_time, original.stan,
                                 original.message_class)
                              = (owner.customer_id, request.terminal_id,
                                 request.original_transmission_time, request.original_stan,
                                 request.original_message_class)
                          LIMIT 1) original ON true
      -- Most requests have neither an original nor a destination: their card's customer alone,
      -- without the sort and set operations the general case takes.
      CROSS JOIN LATERAL (SELECT CASE
        WHEN original.transaction_id IS NULL AND destination.customer_id IS NULL
        THEN CASE WHEN card.card_id IS NOT NULL THEN ARRAY[card.customer_id]
                  ELSE '{}'::bigint[] END
        ELSE ARRAY(
          SELECT DISTINCT customer.customer_id FROM unnest(
                   CASE WHEN card.card_id IS NOT NULL THEN ARRAY[card.customer_id] END
                   || ARRAY(SELECT unnest(original.customer_ids) EXCEPT SELECT 0)
                   || CASE WHEN (SELECT cross_customer_transfers FROM ledger.policy)
                            AND owner.customer_id <> 0
                            AND destination.customer_id NOT IN (0, owner.customer_id)
                           THEN ARRAY[destination.customer_id] END) AS customer(customer_id)
           WHERE customer.customer_id IS NOT NULL ORDER BY 1) END AS customer_ids) admitted
     ORDER BY request.position;
END $$;

-- One request's state (see read_batch), for post_batch's answer to a stale decision.
CREATE OR REPLACE FUNCTION ledger.state_of(
  p_pan_hash bytea, p_terminal_id text, p_transmission_time text, p_stan text,
  p_message_class text, p_original_transmission_time text, p_original_stan text,
  p_original_message_class text, p_to_account text
) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (SELECT request_state FROM ledger.read_batch(
    ARRAY[p_pan_hash], ARRAY[p_terminal_id], ARRAY[p_transmission_time], ARRAY[p_stan],
    ARRAY[p_message_class], ARRAY[p_original_transmission_time], ARRAY[p_original_stan],
    ARRAY[p_original_message_class], ARRAY[p_to_account]) request_state);
END $$;

-- Whether `token` is the HSM's word for `lines` (hsm/authorisation.py): HMAC-SHA256, from the
-- authorisation key's two pads, over the lines joined by newlines, truncated to 16 bytes.
CREATE OR REPLACE FUNCTION ledger.word_valid(inner_pad bytea, outer_pad bytea, token bytea,
                                             lines text[]) RETURNS boolean
  LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT token IS NOT NULL AND inner_pad IS NOT NULL AND token = substring(
    sha256(outer_pad || sha256(inner_pad || convert_to(array_to_string(lines, E'\n'), 'UTF8')))
    FROM 1 FOR 16)
$$;

-- Whether `token` is the HSM's word for this request: a PIN it verified (atc NULL), or a chip
-- cryptogram it verified at that ATC. Scalars only, so it inlines into post_batch's statement.
CREATE OR REPLACE FUNCTION ledger.authorisation_valid(
  inner_pad bytea, outer_pad bytea, token bytea, terminal_id text, transmission_time text,
  stan text, message_class text, pan_hash bytea, amount_minor bigint, currency text, atc integer
) RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT ledger.word_valid(inner_pad, outer_pad, token, ARRAY[
    CASE WHEN atc IS NULL THEN 'kiosk-switch authorisation v1'
         ELSE 'kiosk-switch chip authorisation v1' END,
    terminal_id, transmission_time, stan, message_class, encode(pan_hash, 'hex'),
    amount_minor::text, currency, atc::text])
$$;

-- The writes of a batch of decided requests: one round trip, one transaction, no subtransaction.
-- Each array holds one element per request, in the same order. The switch decides each request
-- on the state read_batch returned and says what it decided; this function, under lock:
--   * answers 'answered' for a request key already written (a repeat), with its stored outcome;
--   * answers 'stale' with the current state when the card, the account the decision checked or
--     a reversal mark changed since that read: the switch decides again;
--   * otherwise derives the customer from the card, the postings from the operation and the
--     card's new counters from its current row, refuses the whole batch when the decision is
--     not one the rules allow (an approval without the HSM's word, an approved withdrawal over
--     a limit, money to an account the card may not reach, a counter reset without a verified
--     PIN, an ATC not above the card's last), and writes the transaction, its postings, the
--     balances, the card (its last ATC too) and one audit block.
-- A genuine error (or a refusal) aborts the batch: the store sends its requests again one per
-- call, so one bad request never fails the others.
-- The caller's batch never holds two requests of one customer (the store guarantees it), so
-- every row is updated at most once per statement.
--
-- Five statements per call, whatever the batch's size: the policy and the authorisation key,
-- the customers' locks, the house accounts' locks, a lane's head, then one that judges every
-- request, writes and answers (the audit block included). A statement's fixed cost (starting and ending its plan, which
-- pg_stat_statements counts against its caller only, and preparing the CHECK constraints of
-- each table it writes) is paid once per call, not per request.
-- Plans must be right whatever the statistics were when they were made (a plan lives as long
-- as the connection): every lookup is a LATERAL subquery on a unique key with LIMIT 1, planned
-- on its own with all its outer values as parameters, so its index condition covers the whole
-- key; joins keep their written order (collapse limits 1) as nested loops (no hash or merge
-- join, no sequential scan) and JIT is off (a disabled path's cost would set it off).
-- And the plan is generic, made once per connection (plan_cache_mode): PL/pgSQL's plan cache
-- otherwise keeps a custom plan per call whenever the array sizes make it look cheaper than
-- the generic one, as small batches do, and planning this statement costs milliseconds
-- (measured: 8 ms per call at 8 tasks, read_batch's 0.5 ms per call at one request).
-- Measured without the LIMITs on tables without statistics: the request key's index probed on
-- customer_id alone, the rest filtered row by row.
CREATE OR REPLACE FUNCTION ledger.post_batch(
  pan_hashes bytea[], terminal_ids text[], transmission_times text[], stans text[],
  message_classes text[], kinds text[], outcomes text[], response_codes text[],
  amounts_minor bigint[], currencies text[], requested_minor bigint[],
  requested_currencies text[], from_types text[], to_types text[], to_accounts text[],
  original_transmission_times text[], original_stans text[], original_message_classes text[],
  reversal_states text[], ledger_balances_minor bigint[], available_balances_minor bigint[],
  business_dates date[], recorded_ats timestamptz[], pans_masked text[], mtis text[],
  processing_codes text[], rrns text[], card_xmins bigint[], checked_account_ids bigint[],
  checked_account_xmins bigint[], card_updates boolean[], card_statuses text[],
  card_pin_tries integer[], card_usage_days date[], card_usage_amounts_minor bigint[],
  card_usage_counts integer[], atcs integer[], authorisations bytea[],
  chip_authorisations bytea[], note_counts integer[]
) RETURNS TABLE (item integer, status text, result jsonb, state jsonb)
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp
  SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
  SET enable_memoize = off SET join_collapse_limit = 1 SET from_collapse_limit = 1
  SET jit = off SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  v_pin_tries_max integer;
  v_cross_customer_transfers boolean;
  -- The authorisation key's pads, which verify the HSM's word on each request.
  v_inner_pad bytea;
  v_outer_pad bytea;
  v_lane integer;
  v_seq bigint;
  v_prev_hash bytea;
  v_positions integer[];
  v_statuses text[];
  v_results jsonb[];
  v_states jsonb[];
  v_written ledger.written_request[];
BEGIN
  SELECT policy.pin_tries_max, policy.cross_customer_transfers, authorisation_key.inner_pad,
         authorisation_key.outer_pad
    INTO v_pin_tries_max, v_cross_customer_transfers, v_inner_pad, v_outer_pad
    FROM ledger.policy LEFT JOIN ledger.authorisation_key ON true;
  -- Locks in one global order, so concurrent batches never deadlock: customers by id (the
  -- cards', a cross-customer transfer's destination's, a reversal's original's), then the house
  -- accounts that move (terminal cash) by id, then the lane's head.
  PERFORM 1 FROM ledger.customers
   WHERE customer_id = ANY (ARRAY(
           SELECT card.customer_id FROM unnest(pan_hashes) AS request(pan_hash)
             CROSS JOIN LATERAL (SELECT card.customer_id FROM ledger.cards card
                                  WHERE card.pan_hash = request.pan_hash LIMIT 1) card
           UNION ALL
           SELECT account.customer_id FROM unnest(to_accounts) AS destination(account_number)
             CROSS JOIN LATERAL (SELECT account.customer_id FROM ledger.accounts account
                                  WHERE account.account_number = destination.account_number
                                  LIMIT 1) account
            WHERE destination.account_number IS NOT NULL AND v_cross_customer_transfers
           UNION ALL
           SELECT posting.customer_id
             FROM unnest(pan_hashes, terminal_ids, original_transmission_times, original_stans,
                         original_message_classes)
                  AS request(pan_hash, terminal_id, original_transmission_time, original_stan,
                             original_message_class)
             CROSS JOIN LATERAL (SELECT original.transaction_id FROM ledger.cards card
                                   JOIN ledger.transactions original
                                     ON (original.customer_id, original.terminal_id,
                                         original.transmission_time, original.stan,
                                         original.message_class)
                                      = (card.customer_id, request.terminal_id,
                                         request.original_transmission_time,
                                         request.original_stan, request.original_message_class)
                                  WHERE card.pan_hash = request.pan_hash
                                    AND request.original_stan IS NOT NULL
                                  LIMIT 1) original
             JOIN ledger.postings posting ON posting.transaction_id = original.transaction_id))
     AND customer_id <> 0
   ORDER BY customer_id FOR UPDATE;
  PERFORM 1 FROM ledger.accounts
   WHERE account_id = ANY (ARRAY(
           SELECT term.cash_account_id
             FROM unnest(terminal_ids, kinds, outcomes) AS request(terminal_id, kind, outcome)
             CROSS JOIN LATERAL (SELECT terminal.cash_account_id FROM ledger.terminals terminal
                                  WHERE terminal.terminal_id = request.terminal_id LIMIT 1) term
            WHERE request.outcome = 'approved' AND request.kind IN ('withdrawal', 'reversal')))
   ORDER BY account_id FOR UPDATE;
  -- The backend's own lane when it is free (one probe; 16: the lanes the baseline makes), else
  -- ledger.open_block's search. An empty batch (the store's warm-up of a new connection) takes
  -- none.
  IF cardinality(pan_hashes) > 0 THEN
    SELECT head.lane, head.seq + 1, head.hash INTO v_lane, v_seq, v_prev_hash
      FROM ledger.audit_heads head
     WHERE head.lane = pg_backend_pid() % 16 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      SELECT block.lane, block.seq, block.prev_hash INTO v_lane, v_seq, v_prev_hash
        FROM ledger.open_block() block;
    END IF;
  END IF;

  WITH judged AS (
    -- Each request judged on the rows as they are now, under the locks.
    SELECT request.*, coalesce(card.customer_id, 0) AS customer_id, card.card_id,
           coalesce(card.pan_masked, request.pan_masked) AS written_pan_masked,
           answered.transaction_id AS answered_id, answered.found AS answered_row,
           judgement.status AS judged_status,
           CASE WHEN judgement.status = 'write' THEN nextval('ledger.transaction_ids') END
             AS transaction_id,
           route.move_minor, source.account_id AS source_account_id,
           source.customer_id AS source_customer_id, source.currency AS source_currency,
           destination.account_id AS destination_account_id,
           destination.customer_id AS destination_customer_id,
           destination.currency AS destination_currency, counters.*,
           CASE WHEN judgement.status = 'write' THEN coalesce(verdict.refusal, chip.refusal) END
             AS refusal
      FROM unnest(pan_hashes, terminal_ids, transmission_times, stans, message_classes, kinds,
                  outcomes, response_codes, amounts_minor, currencies, requested_minor,
                  requested_currencies, from_types, to_types, to_accounts,
                  original_transmission_times, original_stans, original_message_classes,
                  reversal_states, ledger_balances_minor, available_balances_minor,
                  business_dates, recorded_ats, pans_masked, mtis, processing_codes, rrns,
                  card_xmins, checked_account_ids, checked_account_xmins, card_updates,
                  card_statuses, card_pin_tries, card_usage_days, card_usage_amounts_minor,
                  card_usage_counts, atcs, authorisations, chip_authorisations) WITH ORDINALITY
           AS request(pan_hash, terminal_id, transmission_time, stan, message_class, kind,
                      outcome, response_code, amount_minor, currency, requested_minor,
                      requested_currency, from_type, to_type, to_account,
                      original_transmission_time, original_stan, original_message_class,
                      reversal_state, ledger_balance_minor, available_balance_minor,
                      business_date, recorded_at, pan_masked, mti, processing_code, rrn,
                      card_xmin, checked_account_id, checked_account_xmin, sent_card_update,
                      sent_card_status, sent_pin_tries, sent_usage_day, sent_usage_amount_minor,
                      sent_usage_count, atc, authorisation, chip_authorisation, position)
      LEFT JOIN LATERAL (SELECT card.customer_id, card.card_id, card.pan_masked, card.status,
                                card.pin_tries, card.currency, card.max_per_txn_minor,
                                card.daily_amount_minor, card.daily_count, card.usage_day,
                                card.usage_amount_minor, card.usage_count,
                                card.emv_imk_ac IS NOT NULL AS chip_card,
                                card.emv_fallback_allowed, card.emv_last_atc,
                                card.xmin::text::bigint AS row_version
                           FROM ledger.cards card WHERE card.pan_hash = request.pan_hash
                          LIMIT 1) card
        ON true
      LEFT JOIN LATERAL (SELECT terminal.status, terminal.cash_account_id
                           FROM ledger.terminals terminal
                          WHERE terminal.terminal_id = request.terminal_id LIMIT 1) term ON true
      LEFT JOIN LATERAL (SELECT account.xmin::text::bigint AS row_version
                           FROM ledger.accounts account
                          WHERE account.account_id = request.checked_account_id
                          LIMIT 1) checked ON true
      LEFT JOIN LATERAL (SELECT txn.transaction_id, txn AS found FROM ledger.transactions txn
                          WHERE (txn.customer_id, txn.terminal_id, txn.transmission_time,
                                 txn.stan, txn.message_class)
                              = (coalesce(card.customer_id, 0), request.terminal_id,
                                 request.transmission_time, request.stan,
                                 request.message_class) LIMIT 1) answered
        ON true
      LEFT JOIN LATERAL (SELECT original.transaction_id, original.kind, original.outcome,
                                original.amount_minor, original.business_date
                           FROM ledger.transactions original
                          WHERE request.original_stan IS NOT NULL
                            AND (original.customer_id, original.terminal_id,
                                 original.transmission_time, original.stan,
                                 original.message_class)
                              = (card.customer_id, request.terminal_id,
                                 request.original_transmission_time, request.original_stan,
                                 request.original_message_class) LIMIT 1) original ON true
      CROSS JOIN LATERAL (SELECT CASE
        WHEN answered.transaction_id IS NOT NULL THEN 'answered'
        WHEN card.row_version IS DISTINCT FROM request.card_xmin
          OR checked.row_version IS DISTINCT FROM request.checked_account_xmin
          OR (request.reversal_state = 'applied' AND original.transaction_id IS NULL)
          OR (request.reversal_state = 'pending' AND original.transaction_id IS NOT NULL)
          -- The reversal marks: the original's, and this request's own (a reversal came first).
          OR (request.reversal_state IS NOT NULL AND EXISTS (
                SELECT FROM ledger.transactions reversal
                 WHERE (reversal.customer_id, reversal.terminal_id,
                        reversal.original_transmission_time, reversal.original_stan,
                        reversal.original_message_class)
                     = (card.customer_id, request.terminal_id,
                        request.original_transmission_time, request.original_stan,
                        request.original_message_class)
                   AND reversal.reversal_state IS NOT NULL))
          OR (request.outcome = 'approved' AND request.kind IN ('withdrawal', 'transfer')
              AND EXISTS (
                SELECT FROM ledger.transactions reversal
                 WHERE (reversal.customer_id, reversal.terminal_id,
                        reversal.original_transmission_time, reversal.original_stan,
                        reversal.original_message_class)
                     = (card.customer_id, request.terminal_id, request.transmission_time,
                        request.stan, request.message_class)
                   AND reversal.reversal_state IS NOT NULL))
          THEN 'stale'
        ELSE 'write' END AS status OFFSET 0) judgement
      -- The accounts money moves between, from the operation: never from the caller.
      CROSS JOIN LATERAL (SELECT
        CASE WHEN request.kind IN ('withdrawal', 'transfer')
             THEN (SELECT card_account.account_id FROM ledger.card_accounts card_account
                    WHERE card_account.card_id = card.card_id
                      AND card_account.type_code = request.from_type)
             WHEN request.kind = 'reversal'
             THEN (SELECT posting.account_id FROM ledger.postings posting
                    WHERE posting.transaction_id = original.transaction_id
                      AND posting.amount_minor > 0) END
          AS source_account_id,
        CASE WHEN request.kind = 'withdrawal' THEN term.cash_account_id
             WHEN request.kind = 'transfer' AND request.to_type IS NOT NULL
             THEN (SELECT card_account.account_id FROM ledger.card_accounts card_account
                    WHERE card_account.card_id = card.card_id
                      AND card_account.type_code = request.to_type)
             WHEN request.kind = 'transfer'
             THEN (SELECT account.account_id FROM ledger.accounts account
                    WHERE account.account_number = request.to_account)
             WHEN request.kind = 'reversal'
             THEN (SELECT posting.account_id FROM ledger.postings posting
                    WHERE posting.transaction_id = original.transaction_id
                      AND posting.amount_minor < 0) END
          AS destination_account_id,
        CASE WHEN request.outcome = 'approved'
              AND request.kind IN ('withdrawal', 'transfer', 'reversal')
             THEN request.amount_minor ELSE 0 END AS move_minor) route
      LEFT JOIN LATERAL (SELECT account.account_id, account.customer_id,
                                account.currency::text AS currency
                           FROM ledger.accounts account
                          WHERE account.account_id = route.source_account_id
                            AND route.move_minor > 0 LIMIT 1) source ON true
      LEFT JOIN LATERAL (SELECT account.account_id, account.customer_id,
                                account.currency::text AS currency
                           FROM ledger.accounts account
                          WHERE account.account_id = route.destination_account_id
                            AND route.move_minor > 0 LIMIT 1) destination ON true
      -- The card's counters after this request, derived from its row as it is now: a wrong PIN
      -- counts (blocking the card at the limit), an approval resets the count, a withdrawal
      -- adds to the day's usage and the reversal of one gives its amount back.
      CROSS JOIN LATERAL (SELECT CASE
        WHEN card.card_id IS NULL THEN NULL
        WHEN request.kind = 'pin' AND request.outcome IN ('incorrect_pin', 'pin_tries_exceeded')
        THEN 'pin'
        WHEN request.outcome = 'approved' AND request.kind = 'withdrawal' THEN 'withdrawal'
        WHEN request.outcome = 'approved' AND request.kind IN ('inquiry', 'transfer')
         AND card.pin_tries > 0
        THEN 'approval'
        WHEN request.outcome = 'approved' AND request.kind = 'reversal' AND route.move_minor > 0
         AND original.kind = 'withdrawal' AND card.usage_day = original.business_date
        THEN 'give_back'
        END AS change, least(card.pin_tries + 1, v_pin_tries_max) AS tries_after_wrong,
        card.usage_day IS DISTINCT FROM request.business_date AS new_day) why
      CROSS JOIN LATERAL (SELECT
        why.change IS NOT NULL AS card_update,
        CASE why.change WHEN 'pin' THEN why.tries_after_wrong
                        WHEN 'withdrawal' THEN 0 WHEN 'approval' THEN 0
                        ELSE card.pin_tries END AS card_pin_tries,
        CASE WHEN why.change = 'pin' AND why.tries_after_wrong >= v_pin_tries_max
             THEN 'blocked' ELSE card.status END AS card_status,
        CASE why.change WHEN 'withdrawal' THEN request.business_date
                        ELSE card.usage_day END AS card_usage_day,
        CASE why.change
          WHEN 'withdrawal' THEN CASE WHEN why.new_day THEN 0 ELSE card.usage_amount_minor END
                                 + route.move_minor
          WHEN 'give_back' THEN greatest(0, card.usage_amount_minor - route.move_minor)
          ELSE card.usage_amount_minor END AS card_usage_amount_minor,
        CASE why.change
          WHEN 'withdrawal' THEN CASE WHEN why.new_day THEN 0 ELSE card.usage_count END + 1
          ELSE card.usage_count END AS card_usage_count) counters
      -- Why the ledger refuses the decision, or NULL: the rules do not allow it. The switch
      -- never sends such a request; a caller that does is not the switch.
      CROSS JOIN LATERAL (SELECT CASE
        WHEN request.outcome = 'approved'
         AND request.kind IN ('withdrawal', 'transfer', 'inquiry')
         AND NOT ledger.authorisation_valid(v_inner_pad, v_outer_pad, request.authorisation,
               request.terminal_id, request.transmission_time, request.stan,
               request.message_class, request.pan_hash, request.requested_minor,
               request.requested_currency, NULL)
        THEN 'no valid word from the HSM (a PIN it verified) for this request'
        -- A reversal gives money back only with the HSM's word for it, which the HSM gives
        -- only for the terminal's MAC it verified, over what it read from the MACed bytes: the
        -- reversal's key, the card, the original's key, the original's amount (F4) and what
        -- was dispensed (F95); what moves back is exactly the one less the other (below).
        WHEN request.outcome = 'approved' AND request.kind = 'reversal' AND route.move_minor > 0
         AND NOT ledger.word_valid(v_inner_pad, v_outer_pad, request.authorisation, ARRAY[
               'kiosk-switch reversal v1', request.terminal_id, request.transmission_time,
               request.stan, request.message_class, encode(request.pan_hash, 'hex'),
               request.original_transmission_time, request.original_stan,
               request.original_message_class, original.amount_minor::text,
               request.requested_minor::text])
        THEN 'no valid word from the HSM (a MAC it verified) for this reversal'
        WHEN request.sent_card_update IS DISTINCT FROM counters.card_update
          OR (counters.card_update AND
              (request.sent_pin_tries, request.sent_card_status, request.sent_usage_day,
               request.sent_usage_amount_minor, request.sent_usage_count) IS DISTINCT FROM
              (counters.card_pin_tries, counters.card_status, counters.card_usage_day,
               counters.card_usage_amount_minor, counters.card_usage_count))
        THEN 'card counters differ from what the request allows'
        WHEN request.outcome = 'approved' AND request.kind IN ('pin', 'decline')
        THEN format('a %s record cannot be an approval', request.kind)
        WHEN request.reversal_state IS NOT NULL AND request.kind <> 'reversal'
        THEN 'only a reversal marks an original'
        WHEN request.amount_minor IS DISTINCT FROM route.move_minor
        THEN 'the amount differs from the money the operation moves'
        WHEN route.move_minor = 0 THEN NULL
        WHEN source.account_id IS NULL OR destination.account_id IS NULL
        THEN format('no accounts for this %s', request.kind)
        WHEN source.currency <> request.currency OR destination.currency <> request.currency
        THEN 'currency differs from the accounts'''
        WHEN source.account_id = destination.account_id
        THEN 'source and destination are one account'
        WHEN request.kind IN ('withdrawal', 'transfer') AND (card.status <> 'active'
          OR card.pin_tries >= v_pin_tries_max OR card.currency <> request.currency)
        THEN 'this card may not move money'
        WHEN request.kind = 'withdrawal'
         AND (term.cash_account_id IS NULL OR term.status <> 'active')
        THEN 'this terminal may not dispense'
        WHEN request.kind = 'withdrawal' AND (route.move_minor > card.max_per_txn_minor
          OR counters.card_usage_amount_minor > card.daily_amount_minor
          OR counters.card_usage_count > card.daily_count)
        THEN 'over the card''s limits'
        WHEN request.kind = 'transfer' AND (destination.customer_id = 0
          OR (destination.customer_id <> card.customer_id AND NOT v_cross_customer_transfers))
        THEN 'the destination is not one this card may pay into'
        WHEN request.kind = 'reversal' AND (original.transaction_id IS NULL
          OR original.outcome <> 'approved' OR original.kind NOT IN ('withdrawal', 'transfer')
          OR route.move_minor > original.amount_minor
          OR route.move_minor <> original.amount_minor - request.requested_minor
          OR (route.move_minor < original.amount_minor AND original.kind <> 'withdrawal')
          OR request.reversal_state IS DISTINCT FROM 'applied')
        THEN 'not a reversal of this card''s original'
        END AS refusal) verdict
      -- EMV (0003_emv): a chip request's ATC must come with the HSM's word for it (a cryptogram
      -- it verified at that ATC, for this request and amount) and be above the last its card
      -- used; the card's row moves to it below, in the transaction that writes the request, so
      -- two requests with one ATC never both succeed. The switch declines a replay itself; one
      -- that reaches this point was decided on the card's row as it still is (else it is
      -- 'stale'), so it is a decision the rules do not allow. And a chip card whose profile
      -- allows no fallback is approved only by its chip. Checked after the refusals above
      -- whatever the amount (an inquiry moves none).
      CROSS JOIN LATERAL (SELECT CASE
        WHEN card.card_id IS NULL THEN NULL
        WHEN request.atc IS NOT NULL AND NOT ledger.authorisation_valid(v_inner_pad, v_outer_pad,
               request.chip_authorisation, request.terminal_id, request.transmission_time,
               request.stan, request.message_class, request.pan_hash, request.requested_minor,
               request.requested_currency, request.atc)
        THEN 'no valid word from the HSM (a cryptogram it verified) for this ATC'
        WHEN request.atc IS NOT NULL AND (NOT card.chip_card OR card.emv_last_atc >= request.atc)
        THEN 'an ATC not above the card''s last, or for a card with no EMV profile'
        WHEN request.atc IS NULL AND request.outcome = 'approved'
         AND request.kind IN ('withdrawal', 'transfer', 'inquiry') AND card.chip_card
         AND NOT card.emv_fallback_allowed
        THEN 'this chip card is approved only by its chip'
        END AS refusal) chip),
  legs AS (
    SELECT judged.transaction_id, leg.account_id, leg.customer_id, leg.amount_minor,
           judged.currency
      FROM judged
     CROSS JOIN LATERAL (VALUES
             (judged.source_account_id, judged.source_customer_id, -judged.move_minor),
             (judged.destination_account_id, judged.destination_customer_id, judged.move_minor))
           AS leg(account_id, customer_id, amount_minor)
     WHERE judged.judged_status = 'write' AND judged.move_minor > 0),
  inserted AS (
    INSERT INTO ledger.transactions
      SELECT judged.transaction_id, judged.customer_id, judged.terminal_id,
             judged.transmission_time, judged.stan, judged.message_class, judged.kind,
             judged.outcome, judged.response_code, judged.move_minor, judged.currency,
             judged.requested_minor, judged.requested_currency, judged.ledger_balance_minor,
             judged.available_balance_minor, judged.business_date, judged.recorded_at,
             judged.written_pan_masked, judged.mti, judged.processing_code, judged.rrn,
             judged.original_transmission_time, judged.original_stan,
             judged.original_message_class, judged.reversal_state, v_lane, v_seq,
             ledger.leaf(judged.transaction_id, judged.customer_id, judged.terminal_id,
               judged.transmission_time, judged.stan, judged.message_class, judged.kind,
               judged.outcome, judged.response_code, judged.move_minor, judged.currency,
               judged.requested_minor, judged.requested_currency, judged.ledger_balance_minor,
               judged.available_balance_minor, judged.business_date, judged.recorded_at,
               judged.written_pan_masked, judged.mti, judged.processing_code, judged.rrn,
               judged.original_transmission_time, judged.original_stan,
               judged.original_message_class, judged.reversal_state, v_lane, v_seq,
               CASE WHEN judged.move_minor > 0 THEN concat_ws(E'\n',
                 ledger.leg_line(least(judged.source_account_id, judged.destination_account_id),
                   CASE WHEN judged.source_account_id < judged.destination_account_id
                        THEN judged.source_customer_id ELSE judged.destination_customer_id END,
                   CASE WHEN judged.source_account_id < judged.destination_account_id
                        THEN -judged.move_minor ELSE judged.move_minor END, judged.currency),
                 ledger.leg_line(greatest(judged.source_account_id,
                                          judged.destination_account_id),
                   CASE WHEN judged.source_account_id < judged.destination_account_id
                        THEN judged.destination_customer_id ELSE judged.source_customer_id END,
                   CASE WHEN judged.source_account_id < judged.destination_account_id
                        THEN judged.move_minor ELSE -judged.move_minor END, judged.currency))
               END)
        FROM judged
       -- A refused decision aborts the batch before anything is written.
       WHERE judged.judged_status = 'write'
         AND CASE WHEN judged.refusal IS NULL THEN true ELSE ledger.refuse(judged.refusal) END
    RETURNING transaction_id, leaf),
  posted AS (
    INSERT INTO ledger.postings SELECT * FROM legs),
  balances AS (
    UPDATE ledger.accounts account
       SET balance_minor = account.balance_minor + moved.delta_minor
      FROM (SELECT account_id, sum(amount_minor) AS delta_minor FROM legs GROUP BY account_id)
           AS moved
     WHERE account.account_id = moved.account_id),
  -- The counters derived above (the card's own when card_update is false), and a chip
  -- request's ATC as the card's last.
  cards_after AS (
    UPDATE ledger.cards card SET status = judged.card_status, pin_tries = judged.card_pin_tries,
        usage_day = judged.card_usage_day, usage_amount_minor = judged.card_usage_amount_minor,
        usage_count = judged.card_usage_count,
        emv_last_atc = coalesce(judged.atc, card.emv_last_atc)
      FROM judged
     WHERE card.card_id = judged.card_id AND judged.judged_status = 'write'
       AND (judged.card_update OR judged.atc IS NOT NULL)),
  block AS (
    INSERT INTO ledger.audit_blocks
      SELECT v_lane, v_seq, now(), count(*), v_prev_hash,
             ledger.block_hash(v_prev_hash, v_lane, v_seq, count(*)::integer, now(),
                               string_agg(leaf, ''::bytea ORDER BY transaction_id))
        FROM inserted HAVING count(*) > 0
    RETURNING hash),
  head AS (
    UPDATE ledger.audit_heads head SET seq = v_seq, hash = block.hash FROM block
     WHERE head.lane = v_lane)
  -- The answers, kept for after the notes below.
  SELECT array_agg(judged.position::integer ORDER BY judged.position),
         array_agg(judged.judged_status ORDER BY judged.position),
         array_agg(CASE judged.judged_status
                     WHEN 'write'
                     THEN jsonb_build_object('transaction_id', judged.transaction_id)
                     WHEN 'answered' THEN ledger.result_of(judged.answered_row) END
                   ORDER BY judged.position),
         array_agg(CASE WHEN judged.judged_status = 'stale' THEN ledger.state_of(
                     judged.pan_hash, judged.terminal_id, judged.transmission_time,
                     judged.stan, judged.message_class, judged.original_transmission_time,
                     judged.original_stan, judged.original_message_class,
                     judged.to_account) END
                   ORDER BY judged.position),
         array_agg(ROW(judged.position, judged.judged_status, judged.transaction_id,
                       judged.customer_id, judged.move_minor)::ledger.written_request
                   ORDER BY judged.position)
    INTO v_positions, v_statuses, v_results, v_states, v_written
    FROM judged;
  -- ATM cash (0004_cash): the notes each written request moves, checked against the cassettes
  -- (a refusal aborts the batch, as the others do).
  PERFORM ledger.dispense_notes(v_written, terminal_ids, kinds, outcomes, currencies,
    original_transmission_times, original_stans, original_message_classes, note_counts);
  -- A closed business day takes no more postings (0007_balancing).
  PERFORM ledger.refuse_closed_days(business_dates);
  RETURN QUERY SELECT * FROM unnest(v_positions, v_statuses, v_results, v_states);
END $$;

-- Raises the refusal of a decided request (see post_batch): aborts its batch.
CREATE OR REPLACE FUNCTION ledger.refuse(reason text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'refused: %', reason USING ERRCODE = 'insufficient_privilege';
END $$;

-- An account's opening balance, posted against the house funding account of its currency and
-- journalled like any transaction (provisioning, as the owner).
CREATE OR REPLACE FUNCTION ledger.post_opening(p_account_id bigint, p_amount_minor bigint,
                                               p_at timestamptz) RETURNS bigint
  LANGUAGE plpgsql AS $$
DECLARE
  v_account ledger.accounts;
  v_funding_id bigint;
  v_lane integer;
  v_seq bigint;
  v_prev_hash bytea;
  v_row ledger.transactions;
  v_id bigint := nextval('ledger.transaction_ids');
BEGIN
  ASSERT p_amount_minor <> 0, 'an opening balance is not zero';
  SELECT * INTO STRICT v_account FROM ledger.accounts WHERE account_id = p_account_id;
  INSERT INTO ledger.accounts (customer_id, account_number, type_code, currency)
    VALUES (0, 'FUNDING-' || v_account.currency, 'funding', v_account.currency)
    ON CONFLICT (account_number) DO UPDATE SET currency = EXCLUDED.currency
    RETURNING account_id INTO v_funding_id;
  PERFORM 1 FROM ledger.accounts WHERE account_id IN (p_account_id, v_funding_id)
    ORDER BY account_id FOR UPDATE;
  SELECT block.lane, block.seq, block.prev_hash INTO v_lane, v_seq, v_prev_hash
    FROM ledger.open_block() block;
  v_row := ROW(v_id, v_account.customer_id, '', to_char(p_at AT TIME ZONE 'UTC', 'MMDDHH24MISS'),
               v_id::text, 'opening', 'opening', 'approved', '00', abs(p_amount_minor),
               v_account.currency, abs(p_amount_minor), v_account.currency, NULL, NULL,
               (p_at AT TIME ZONE 'UTC')::date, p_at, '', '', '', '', NULL, NULL, NULL, NULL,
               v_lane, v_seq, '\x'::bytea)::ledger.transactions;
  v_row.leaf := ledger.leaf(v_row, (
    SELECT string_agg(ledger.leg_line(account.account_id, account.customer_id, leg.amount_minor,
                                      account.currency),
                      E'\n' ORDER BY account.account_id)
      FROM (VALUES (p_account_id, p_amount_minor), (v_funding_id, -p_amount_minor))
           AS leg(account_id, amount_minor)
      JOIN ledger.accounts account USING (account_id)));
  INSERT INTO ledger.transactions SELECT (v_row).*;
  INSERT INTO ledger.postings
    SELECT v_id, account.account_id, account.customer_id, leg.amount_minor, account.currency
      FROM (VALUES (p_account_id, p_amount_minor), (v_funding_id, -p_amount_minor))
           AS leg(account_id, amount_minor)
      JOIN ledger.accounts account USING (account_id);
  UPDATE ledger.accounts SET balance_minor = balance_minor + CASE account_id
      WHEN p_account_id THEN p_amount_minor ELSE -p_amount_minor END
   WHERE account_id IN (p_account_id, v_funding_id);
  PERFORM ledger.close_block(v_lane, v_seq, v_prev_hash, now(), 1, v_row.leaf);
  RETURN v_id;
END $$;

-- A terminal's status and key cryptograms (under the LMK), read when it signs on.
CREATE OR REPLACE FUNCTION ledger.terminal_keys(p_terminal_id text)
  RETURNS TABLE (terminal_id text, status text, tmk text, bdk text, tpk text, tak text)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN QUERY SELECT terminal.terminal_id, terminal.status, terminal.tmk, terminal.bdk,
                      terminal.tpk, terminal.tak
                 FROM ledger.terminals terminal WHERE terminal.terminal_id = p_terminal_id;
END $$;

-- New session keys after a key change. Only the session keys: a terminal's master key and base
-- derivation key are set by provisioning, never by the switch. And only with the HSM's word
-- that it generated them under this terminal's own TMK: keys copied from another terminal, or
-- generated under another terminal's TMK, are refused.
CREATE OR REPLACE FUNCTION ledger.set_session_keys(p_terminal_id text, p_tpk text, p_tak text,
                                                   p_authorisation bytea)
  RETURNS boolean
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_key ledger.authorisation_key;
  v_tmk text;
BEGIN
  SELECT * INTO v_key FROM ledger.authorisation_key;
  SELECT tmk INTO v_tmk FROM ledger.terminals WHERE terminal_id = p_terminal_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  ELSIF NOT ledger.word_valid(v_key.inner_pad, v_key.outer_pad, p_authorisation, ARRAY[
          'kiosk-switch session keys v1', p_terminal_id, v_tmk, p_tpk, p_tak]) THEN
    RAISE EXCEPTION 'refused: no valid word from the HSM for these session keys of %',
      p_terminal_id USING ERRCODE = 'insufficient_privilege';
  END IF;
  UPDATE ledger.terminals SET tpk = p_tpk, tak = p_tak WHERE terminal_id = p_terminal_id;
  RETURN true;
END $$;

-- The applied migration and the functions file's digest, so a switch refuses a schema older
-- than its code.
CREATE OR REPLACE FUNCTION ledger.schema_state(OUT version integer, OUT functions_sha256 text)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  SELECT coalesce(max(migration.version), 0) INTO version FROM ledger.schema_migrations migration;
  SELECT schema_functions.sha256 INTO functions_sha256 FROM ledger.schema_functions;
END $$;

-- Every chain's head, for the anchor publisher (which signs them with a key the database never
-- sees): hashes only, no customer data.
CREATE OR REPLACE FUNCTION ledger.audit_heads_now()
  RETURNS TABLE (lane integer, seq bigint, hash bytea)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN QUERY SELECT head.lane, head.seq, head.hash FROM ledger.audit_heads head
                ORDER BY head.lane;
END $$;

-- The check value of the authorisation key: the switch compares it with its HSM's at start.
CREATE OR REPLACE FUNCTION ledger.authorisation_check_value() RETURNS text
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  RETURN (SELECT check_value FROM ledger.authorisation_key);
END $$;

-- The rules the database enforces, so the switch can refuse to start with others.
-- Its result grew (the cutover, 0007): a changed result type needs the old function gone first.
DROP FUNCTION IF EXISTS ledger.current_policy();
CREATE OR REPLACE FUNCTION ledger.current_policy(OUT pin_tries_max integer,
                                                 OUT cross_customer_transfers boolean,
                                                 OUT business_day_cutover time)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  SELECT policy.pin_tries_max, policy.cross_customer_transfers, policy.business_day_cutover
    INTO pin_tries_max, cross_customer_transfers, business_day_cutover
    FROM ledger.policy;
END $$;

-- The switch executes these eight and nothing else. Functions are executable by PUBLIC unless
-- revoked: the internal ones (decisions, hashing, blocks) are the owner's only.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  ledger.read_batch(bytea[], text[], text[], text[], text[], text[], text[], text[], text[]),
  ledger.post_batch(bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[],
                    text[], bigint[], text[], text[], text[], text[], text[], text[], text[],
                    text[], bigint[], bigint[], date[], timestamptz[], text[], text[], text[],
                    text[], bigint[], bigint[], bigint[], boolean[], text[], integer[], date[],
                    bigint[], integer[], integer[], bytea[], bytea[], integer[]),
  ledger.terminal_keys(text),
  ledger.set_session_keys(text, text, text, bytea),
  ledger.schema_state(),
  ledger.current_policy(),
  ledger.audit_heads_now(),
  ledger.authorisation_check_value()
  TO ledger_switch;

-- Operations: the switch processes, terminal events, traffic, alerts and journal checks
-- (tables in 0002_terminal_events.sql). The switch writes them only through these functions,
-- which append events and never rewrite them, and reads them through the rest. Reads are SQL:
-- they run once per refresh, not per request, so a plan per call costs nothing that matters.

-- A switch process is alive (at start, then every beat), or has stopped.
CREATE OR REPLACE FUNCTION ledger.process_beat(
  p_process_id text, p_host text, p_pid integer, p_started_at timestamptz, p_at timestamptz,
  p_stopped boolean
) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  INSERT INTO ledger.switch_processes AS process (process_id, host, pid, started_at, beat_at,
                                            stopped_at)
    VALUES (p_process_id, p_host, p_pid, p_started_at, p_at,
            CASE WHEN p_stopped THEN p_at END)
    ON CONFLICT (process_id) DO UPDATE
      SET beat_at = greatest(process.beat_at, EXCLUDED.beat_at),
          stopped_at = coalesce(process.stopped_at, EXCLUDED.stopped_at);
END $$;

-- A batch of session events from one process, in its order.
CREATE OR REPLACE FUNCTION ledger.record_terminal_events(
  p_process_id text, terminal_ids text[], kinds text[], occurred_ats timestamptz[],
  connection_seqs bigint[], details jsonb[]
) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_count integer;
BEGIN
  -- Alert transitions are appended by the alert functions, in the transaction that makes them.
  IF 'alert' = ANY (kinds) THEN
    RAISE EXCEPTION 'alert events are written by the alert functions only'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  INSERT INTO ledger.terminal_events (terminal_id, kind, occurred_at, process_id,
                                      connection_seq, detail)
    SELECT event.terminal_id, event.kind, event.occurred_at, p_process_id, event.connection_seq,
           event.detail
      FROM unnest(terminal_ids, kinds, occurred_ats, connection_seqs, details) WITH ORDINALITY
           AS event(terminal_id, kind, occurred_at, connection_seq, detail, position)
     ORDER BY event.position;
  GET DIAGNOSTICS v_count = ROW_COUNT;
  RETURN v_count;
END $$;

-- Two counts-by-key objects added key by key.
CREATE OR REPLACE FUNCTION ledger.add_counts(base jsonb, added jsonb) RETURNS jsonb
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(jsonb_object_agg(code, total), '{}')
    FROM (SELECT code, sum(count::bigint) AS total
            FROM (SELECT * FROM jsonb_each_text(base)
                  UNION ALL SELECT * FROM jsonb_each_text(added)) AS both_counts(code, count)
           GROUP BY code) AS summed
$$;

-- Two histograms of the same bounds added bucket by bucket.
CREATE OR REPLACE FUNCTION ledger.add_histograms(base integer[], added integer[])
  RETURNS integer[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT array_agg(coalesce(base_count, 0) + coalesce(added_count, 0) ORDER BY position)
    FROM unnest(base, added) WITH ORDINALITY AS buckets(base_count, added_count, position)
$$;

-- A process's traffic since its last flush, one item per terminal and bucket, added to the
-- process's own rows (created on first use). latency_counts holds the items' histograms one
-- after another, each of the same size.
CREATE OR REPLACE FUNCTION ledger.record_terminal_traffic(
  p_process_id text, terminal_ids text[], bucket_starts timestamptz[], request_counts integer[],
  financial_counts integer[], approved_counts integer[], response_code_counts jsonb[],
  latency_counts integer[], last_seen_ats timestamptz[], chip_counts integer[]
) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_count integer;
  v_size integer := cardinality(latency_counts) / greatest(cardinality(terminal_ids), 1);
BEGIN
  ASSERT v_size * cardinality(terminal_ids) = cardinality(latency_counts),
    'one histogram of the same size per item';
  INSERT INTO ledger.terminal_traffic AS traffic
    SELECT item.terminal_id, item.bucket_start, p_process_id, item.requests, item.financial,
           item.approved, item.response_codes,
           latency_counts[(item.position - 1) * v_size + 1 : item.position * v_size],
           item.last_seen_at, item.chip
      FROM unnest(terminal_ids, bucket_starts, request_counts, financial_counts,
                  approved_counts, response_code_counts, last_seen_ats, chip_counts)
           WITH ORDINALITY
           AS item(terminal_id, bucket_start, requests, financial, approved, response_codes,
                last_seen_at, chip, position)
    ON CONFLICT (terminal_id, bucket_start, process_id) DO UPDATE
      SET requests = traffic.requests + EXCLUDED.requests,
          financial = traffic.financial + EXCLUDED.financial,
          approved = traffic.approved + EXCLUDED.approved,
          chip = traffic.chip + EXCLUDED.chip,
          response_codes = ledger.add_counts(traffic.response_codes, EXCLUDED.response_codes),
          latency_counts = ledger.add_histograms(traffic.latency_counts, EXCLUDED.latency_counts),
          last_seen_at = greatest(traffic.last_seen_at, EXCLUDED.last_seen_at);
  GET DIAGNOSTICS v_count = ROW_COUNT;
  RETURN v_count;
END $$;

-- Each terminal's traffic with buckets starting in [p_from, p_to), summed over processes:
-- per business day (which starts p_cutover after midnight UTC), or over the whole range when
-- p_cutover is NULL (business_date NULL).
-- Its columns grew (chip, 0006): a changed result type needs the old function gone first.
DROP FUNCTION IF EXISTS ledger.traffic_totals(timestamptz, timestamptz, interval);
CREATE OR REPLACE FUNCTION ledger.traffic_totals(p_from timestamptz, p_to timestamptz,
                                                 p_cutover interval)
  RETURNS TABLE (terminal_id text, business_date date, requests bigint, financial bigint,
                 approved bigint, response_codes jsonb, latency_counts bigint[],
                 last_seen_at timestamptz, chip bigint)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  WITH buckets AS (
    SELECT traffic.*, ((traffic.bucket_start AT TIME ZONE 'UTC') - p_cutover)::date AS day
      FROM ledger.terminal_traffic traffic
     WHERE traffic.bucket_start >= p_from AND traffic.bucket_start < p_to),
  totals AS (
    SELECT bucket.terminal_id, bucket.day, sum(bucket.requests) AS requests,
           sum(bucket.financial) AS financial, sum(bucket.approved) AS approved,
           max(bucket.last_seen_at) AS last_seen_at, sum(bucket.chip) AS chip
      FROM buckets bucket GROUP BY bucket.terminal_id, bucket.day),
  codes AS (
    SELECT code_total.terminal_id, code_total.day,
           jsonb_object_agg(code_total.code, code_total.total) AS response_codes
      FROM (SELECT bucket.terminal_id, bucket.day, code_count.key AS code,
                   sum(code_count.value::bigint) AS total
              FROM buckets bucket
              CROSS JOIN LATERAL jsonb_each_text(bucket.response_codes) code_count
             GROUP BY 1, 2, 3) code_total
     GROUP BY code_total.terminal_id, code_total.day),
  latency AS (
    SELECT bin_total.terminal_id, bin_total.day,
           array_agg(bin_total.total ORDER BY bin_total.position) AS latency_counts
      FROM (SELECT bucket.terminal_id, bucket.day, latency_bin.position,
                   sum(latency_bin.count)::bigint AS total
              FROM buckets bucket CROSS JOIN LATERAL unnest(bucket.latency_counts) WITH ORDINALITY
                   AS latency_bin(count, position)
             GROUP BY 1, 2, 3) bin_total
     GROUP BY bin_total.terminal_id, bin_total.day)
  SELECT totals.terminal_id, totals.day, totals.requests, totals.financial, totals.approved,
         coalesce(codes.response_codes, '{}'), latency.latency_counts, totals.last_seen_at,
         totals.chip
    FROM totals
    LEFT JOIN codes
      ON codes.terminal_id = totals.terminal_id AND codes.day IS NOT DISTINCT FROM totals.day
    LEFT JOIN latency
      ON latency.terminal_id = totals.terminal_id AND latency.day IS NOT DISTINCT FROM totals.day
   ORDER BY totals.terminal_id, totals.day
$$;

-- Every provisioned terminal with what the fleet view decides its state from: its latest
-- sign-on, whether that connection has closed since, the process that serves it, and when it
-- was last seen (any event, or traffic in buckets from p_since on).
CREATE OR REPLACE FUNCTION ledger.fleet_state(p_since timestamptz)
  RETURNS TABLE (terminal_id text, location text, status text, signed_on_at timestamptz,
                 closed_at timestamptz, process_id text, process_beat_at timestamptz,
                 process_stopped_at timestamptz, last_event_at timestamptz,
                 last_traffic_at timestamptz)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT terminal.terminal_id, terminal.location, terminal.status, opened.occurred_at,
         closed.occurred_at, opened.process_id, process.beat_at, process.stopped_at,
         latest.occurred_at, traffic.last_seen_at
    FROM ledger.terminals terminal
    LEFT JOIN LATERAL (
      SELECT event.occurred_at, event.process_id, event.connection_seq
        FROM ledger.terminal_events event
       WHERE event.terminal_id = terminal.terminal_id AND event.kind = 'sign_on'
       ORDER BY event.occurred_at DESC LIMIT 1) opened ON true
    LEFT JOIN LATERAL (
      SELECT event.occurred_at FROM ledger.terminal_events event
       WHERE event.terminal_id = terminal.terminal_id AND event.occurred_at >= opened.occurred_at
         AND event.kind IN ('sign_off', 'disconnect')
         AND (event.process_id, event.connection_seq) = (opened.process_id, opened.connection_seq)
       ORDER BY event.occurred_at DESC LIMIT 1) closed ON true
    LEFT JOIN ledger.switch_processes process ON process.process_id = opened.process_id
    LEFT JOIN LATERAL (
      SELECT event.occurred_at FROM ledger.terminal_events event
       WHERE event.terminal_id = terminal.terminal_id AND event.kind <> 'alert'
       ORDER BY event.occurred_at DESC LIMIT 1) latest ON true
    LEFT JOIN LATERAL (
      SELECT max(bucket.last_seen_at) AS last_seen_at FROM ledger.terminal_traffic bucket
       WHERE bucket.terminal_id = terminal.terminal_id AND bucket.bucket_start >= p_since) traffic
      ON true
   ORDER BY terminal.terminal_id
$$;

-- The session events the SLA report replays for [p_from, p_to): each terminal's last one
-- before the range (was it signed on when the range began?), then every one inside it, each
-- with its process's last beat and stop (a session ends at the latest when its process does).
CREATE OR REPLACE FUNCTION ledger.session_events(p_from timestamptz, p_to timestamptz)
  RETURNS TABLE (terminal_id text, kind text, occurred_at timestamptz, process_id text,
                 connection_seq bigint, process_beat_at timestamptz,
                 process_stopped_at timestamptz)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  WITH events AS (
    SELECT before.* FROM ledger.terminals terminal CROSS JOIN LATERAL (
      SELECT event.terminal_id, event.kind, event.occurred_at, event.process_id,
             event.connection_seq
        FROM ledger.terminal_events event
       WHERE event.terminal_id = terminal.terminal_id AND event.occurred_at < p_from
         AND event.kind IN ('sign_on', 'key_change', 'sign_off', 'disconnect')
       ORDER BY event.occurred_at DESC LIMIT 1) before
    UNION ALL
    SELECT event.terminal_id, event.kind, event.occurred_at, event.process_id,
           event.connection_seq
      FROM ledger.terminal_events event
     WHERE event.occurred_at >= p_from AND event.occurred_at < p_to
       AND event.terminal_id IS NOT NULL
       AND event.kind IN ('sign_on', 'key_change', 'sign_off', 'disconnect'))
  SELECT event.terminal_id, event.kind, event.occurred_at, event.process_id, event.connection_seq,
         process.beat_at, process.stopped_at
    FROM events event LEFT JOIN ledger.switch_processes process USING (process_id)
   ORDER BY event.occurred_at, event.terminal_id
$$;

-- The switch processes that beat from p_since on and have not stopped.
CREATE OR REPLACE FUNCTION ledger.live_processes(p_since timestamptz) RETURNS SETOF text
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT process.process_id FROM ledger.switch_processes process
   WHERE process.beat_at >= p_since AND process.stopped_at IS NULL ORDER BY process.process_id
$$;

-- The terminals, for reports that list every one.
CREATE OR REPLACE FUNCTION ledger.terminal_list()
  RETURNS TABLE (terminal_id text, location text, status text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT terminal.terminal_id, terminal.location, terminal.status
    FROM ledger.terminals terminal ORDER BY terminal.terminal_id
$$;

-- Appends an alert's transition to the terminal events, in the transaction that made it.
CREATE OR REPLACE FUNCTION ledger.append_alert_event(changed ledger.alerts, p_at timestamptz,
                                                     p_process_id text) RETURNS void
  LANGUAGE sql AS $$
  INSERT INTO ledger.terminal_events (terminal_id, kind, occurred_at, process_id, detail)
    VALUES (changed.terminal_id, 'alert', p_at, p_process_id,
            jsonb_build_object('alert_id', changed.alert_id, 'rule', changed.rule,
                               'subject', changed.subject, 'state', changed.state))
$$;

-- Raises an alert unless one for the same rule and subject is open: `created` says which, so
-- of several switch processes raising it at once exactly one notifies.
CREATE OR REPLACE FUNCTION ledger.fire_alert(
  p_rule text, p_subject text, p_terminal_id text, p_severity text, p_summary text,
  p_at timestamptz, p_process_id text
) RETURNS TABLE (alert jsonb, created boolean)
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_alert ledger.alerts;
BEGIN
  INSERT INTO ledger.alerts AS raised (rule, subject, terminal_id, severity, summary, state,
                                       raised_at, raised_by)
    VALUES (p_rule, p_subject, p_terminal_id, p_severity, p_summary, 'firing', p_at,
            p_process_id)
    ON CONFLICT (rule, subject) WHERE state <> 'resolved' DO NOTHING
    RETURNING raised.* INTO v_alert;
  IF v_alert.alert_id IS NULL THEN
    SELECT open_alert.* INTO v_alert FROM ledger.alerts open_alert
     WHERE (open_alert.rule, open_alert.subject) = (p_rule, p_subject)
       AND open_alert.state <> 'resolved';
    RETURN QUERY SELECT to_jsonb(v_alert), false;
    RETURN;
  END IF;
  PERFORM ledger.append_alert_event(v_alert, p_at, p_process_id);
  RETURN QUERY SELECT to_jsonb(v_alert), true;
END $$;

-- Resolves an open alert; NULL when it was resolved already (by another process).
CREATE OR REPLACE FUNCTION ledger.resolve_alert(p_alert_id bigint, p_at timestamptz,
                                                p_process_id text) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_alert ledger.alerts;
BEGIN
  UPDATE ledger.alerts alert
     SET state = 'resolved', resolved_at = greatest(p_at, alert.raised_at)
   WHERE alert.alert_id = p_alert_id AND alert.state <> 'resolved'
  RETURNING alert.* INTO v_alert;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  PERFORM ledger.append_alert_event(v_alert, p_at, p_process_id);
  RETURN to_jsonb(v_alert);
END $$;

-- An operator acknowledges a firing alert. outcome: 'acknowledged', 'unknown' (no such alert)
-- or 'not_firing' (acknowledged or resolved already); `alert` is the alert as it now stands.
CREATE OR REPLACE FUNCTION ledger.acknowledge_alert(p_alert_id bigint, p_by text,
                                                    p_at timestamptz, p_process_id text)
  RETURNS TABLE (outcome text, alert jsonb)
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_alert ledger.alerts;
BEGIN
  UPDATE ledger.alerts firing SET state = 'acknowledged', acknowledged_by = p_by,
         acknowledged_at = greatest(p_at, firing.raised_at)
   WHERE firing.alert_id = p_alert_id AND firing.state = 'firing'
  RETURNING firing.* INTO v_alert;
  IF FOUND THEN
    PERFORM ledger.append_alert_event(v_alert, p_at, p_process_id);
    RETURN QUERY SELECT 'acknowledged', to_jsonb(v_alert);
    RETURN;
  END IF;
  SELECT existing.* INTO v_alert FROM ledger.alerts existing WHERE existing.alert_id = p_alert_id;
  RETURN QUERY SELECT CASE WHEN FOUND THEN 'not_firing' ELSE 'unknown' END,
                      CASE WHEN FOUND THEN to_jsonb(v_alert) END;
END $$;

-- Every open alert, then those raised or resolved from p_since on, newest first, at most
-- p_limit in all.
CREATE OR REPLACE FUNCTION ledger.alert_list(p_since timestamptz, p_limit integer)
  RETURNS SETOF jsonb
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT to_jsonb(alert) FROM ledger.alerts alert
   WHERE alert.state <> 'resolved' OR alert.raised_at >= p_since OR alert.resolved_at >= p_since
   ORDER BY alert.state = 'resolved', alert.raised_at DESC, alert.alert_id DESC
   LIMIT p_limit
$$;

-- The alerts raised in [p_from, p_to), for the SLA report.
CREATE OR REPLACE FUNCTION ledger.alerts_raised(p_from timestamptz, p_to timestamptz)
  RETURNS SETOF jsonb
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT to_jsonb(alert) FROM ledger.alerts alert
   WHERE alert.raised_at >= p_from AND alert.raised_at < p_to
   ORDER BY alert.raised_at, alert.alert_id
$$;

-- A run of `audit verify` by a switch process, and the latest one.
CREATE OR REPLACE FUNCTION ledger.record_audit_check(
  p_process_id text, p_at timestamptz, p_outcome text, p_records bigint, p_problem text
) RETURNS void
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
BEGIN
  INSERT INTO ledger.audit_checks (checked_at, process_id, outcome, records, problem)
    VALUES (p_at, p_process_id, p_outcome, p_records, p_problem);
END $$;

CREATE OR REPLACE FUNCTION ledger.latest_audit_check()
  RETURNS TABLE (checked_at timestamptz, process_id text, outcome text, records bigint,
                 problem text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT audit_check.checked_at, audit_check.process_id, audit_check.outcome,
         audit_check.records, audit_check.problem
    FROM ledger.audit_checks audit_check
   ORDER BY audit_check.checked_at DESC, audit_check.check_id DESC LIMIT 1
$$;

-- The switch executes the operations functions too; the helpers stay the owner's.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  ledger.process_beat(text, text, integer, timestamptz, timestamptz, boolean),
  ledger.record_terminal_events(text, text[], text[], timestamptz[], bigint[], jsonb[]),
  ledger.record_terminal_traffic(text, text[], timestamptz[], integer[], integer[], integer[],
                                 jsonb[], integer[], timestamptz[], integer[]),
  ledger.traffic_totals(timestamptz, timestamptz, interval),
  ledger.fleet_state(timestamptz),
  ledger.session_events(timestamptz, timestamptz),
  ledger.terminal_list(),
  ledger.live_processes(timestamptz),
  ledger.fire_alert(text, text, text, text, text, timestamptz, text),
  ledger.resolve_alert(bigint, timestamptz, text),
  ledger.acknowledge_alert(bigint, text, timestamptz, text),
  ledger.alert_list(timestamptz, integer),
  ledger.alerts_raised(timestamptz, timestamptz),
  ledger.record_audit_check(text, timestamptz, text, bigint, text),
  ledger.latest_audit_check()
  TO ledger_switch;

-- ATM cash (0004_cash): cassettes, the notes each request moves, replenishment.

-- No function per request: read_batch reads cassettes and dispense_notes judges notes in one
-- statement per batch.
DROP FUNCTION IF EXISTS ledger.notes_refusal(text, boolean, bigint, text, text, bigint, jsonb);
DROP FUNCTION IF EXISTS ledger.cassettes_of(text);

-- The notes of a post_batch's written requests, per request and cassette: note_counts holds one
-- row per request (in the batch's order) and one column per cassette number, each the notes a
-- withdrawal dispenses or a reversal puts back (never negative: the kind gives the direction).
CREATE OR REPLACE FUNCTION ledger.notes_sent(
  items ledger.written_request[], terminal_ids text[], kinds text[], note_counts integer[]
) RETURNS TABLE (item integer, transaction_id bigint, terminal_id text, kind text,
                 cassette_no integer, notes integer)
  LANGUAGE sql STABLE AS $$
  -- SQL, so the planner inlines it into the statements that read it (no call of its own).
  SELECT written.position, written.transaction_id, terminal_ids[written.position],
         kinds[written.position], slot.cassette_no,
         note_counts[written.position][slot.cassette_no]
    FROM unnest(items) written
   CROSS JOIN generate_subscripts(note_counts, 2) AS slot(cassette_no)
   WHERE written.status = 'write' AND note_counts[written.position][slot.cassette_no] <> 0
$$;

-- Called by post_batch under its locks (the cash account of every terminal an approved
-- withdrawal or reversal moves is locked, so one terminal's cassettes change in one transaction
-- at a time): refuses, as post_batch's other refusals, notes the rules would never send, then
-- records each request's notes and moves its cassettes' counts.
-- The rules, per written request that carries notes or moves cash (declines and inquiries cost
-- nothing here): a withdrawal at a terminal with cassettes carries the mix of its amount from
-- them (how many each may give is checked over the whole batch); one at a terminal without
-- cassettes (cash the host does not count) carries none. A reversal puts back notes its
-- original dispensed, worth what it moves, unless a cassette was replenished since (those notes
-- were counted out with the old load): then it puts back none. Nothing else moves notes.
-- One statement judges the whole batch (a function per request would start a plan per
-- statement per request: a fifth of post_batch's time at 32 requests per call).
CREATE OR REPLACE FUNCTION ledger.dispense_notes(
  items ledger.written_request[], terminal_ids text[], kinds text[], outcomes text[],
  currencies text[], original_transmission_times text[], original_stans text[],
  original_message_classes text[], note_counts integer[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_refusal text;
BEGIN
  SELECT verdict.refusal INTO v_refusal FROM (
    SELECT CASE
      WHEN sent.negative THEN 'a negative count of notes'
      WHEN sent.notes > 0 AND NOT (request.moves AND request.kind IN ('withdrawal', 'reversal'))
      THEN format('notes on a request (%s) that moves no cash', request.kind)
      WHEN sent.unknown THEN 'notes from a cassette this terminal does not have'
      WHEN sent.other_currency THEN 'notes of another currency than the amount''s'
      WHEN request.kind = 'withdrawal' AND request.moves
       AND sent.value_minor <> written.move_minor
       AND EXISTS (SELECT FROM ledger.cassettes cassette
                    WHERE cassette.terminal_id = request.terminal_id)
      THEN 'the note mix does not make the amount'
      WHEN request.kind = 'reversal' AND request.moves
       AND NOT coalesce(original.dispensed AND original.same_load, false) AND sent.notes > 0
      THEN 'notes put back into a cassette its original did not dispense from, or since replenished'
      WHEN request.kind = 'reversal' AND request.moves AND original.dispensed
       AND original.same_load AND (sent.value_minor <> written.move_minor
         OR original.over_original
         OR EXISTS (SELECT FROM generate_subscripts(note_counts, 2) AS slot(cassette_no)
                     WHERE note_counts[written.position][slot.cassette_no] <> 0
                       AND NOT EXISTS (SELECT FROM ledger.note_movements movement
                                        WHERE movement.transaction_id = original.transaction_id
                                          AND movement.cassette_no = slot.cassette_no
                                          AND movement.notes > 0)))
      THEN 'the notes put back are not the undispensed part of the original''s mix'
      END AS refusal
      FROM unnest(items) written
      CROSS JOIN LATERAL (SELECT kinds[written.position] AS kind,
                                 terminal_ids[written.position] AS terminal_id,
                                 outcomes[written.position] = 'approved'
                                   AND written.move_minor > 0 AS moves)
                         request
      -- The notes sent, from the cassettes the terminal has (unknown ones count no value).
      CROSS JOIN LATERAL (
        SELECT coalesce(sum(slot.notes), 0) AS notes,
               coalesce(bool_or(slot.notes < 0), false) AS negative,
               coalesce(sum(slot.notes::bigint * cassette.denomination_minor), 0) AS value_minor,
               coalesce(bool_or(cassette.cassette_no IS NULL), false) AS unknown,
               coalesce(bool_or(cassette.currency <> currencies[written.position]), false)
                 AS other_currency
          FROM generate_subscripts(note_counts, 2) AS subscript(cassette_no)
          CROSS JOIN LATERAL (SELECT subscript.cassette_no,
                                     note_counts[written.position][subscript.cassette_no]
                                       AS notes) slot
          LEFT JOIN LATERAL (SELECT cassette.cassette_no, cassette.denomination_minor,
                                    cassette.currency
                               FROM ledger.cassettes cassette
                              WHERE (cassette.terminal_id, cassette.cassette_no)
                                  = (request.terminal_id, slot.cassette_no::smallint)
                              LIMIT 1) cassette ON true
         WHERE slot.notes <> 0) sent
      -- A reversal's original: the notes it dispensed, from loads still in their cassettes.
      LEFT JOIN LATERAL (
        SELECT original.transaction_id, count(movement.transaction_id) > 0 AS dispensed,
               coalesce(bool_and(movement.load_seq = cassette.load_seq), false) AS same_load,
               coalesce(bool_or(coalesce(note_counts[written.position][movement.cassette_no], 0)
                                > movement.notes), false) AS over_original
          FROM ledger.transactions original
          LEFT JOIN (ledger.note_movements movement
                     JOIN ledger.cassettes cassette
                       ON (cassette.terminal_id, cassette.cassette_no)
                        = (movement.terminal_id, movement.cassette_no))
            ON movement.transaction_id = original.transaction_id AND movement.notes > 0
         WHERE (original.customer_id, original.terminal_id, original.transmission_time,
                original.stan, original.message_class)
             = (written.customer_id, request.terminal_id,
                original_transmission_times[written.position], original_stans[written.position],
                original_message_classes[written.position])
         GROUP BY original.transaction_id) original ON request.kind = 'reversal'
     WHERE written.status = 'write' AND (sent.notes <> 0 OR sent.negative OR (request.moves
            AND request.kind IN ('withdrawal', 'reversal')))) verdict
   WHERE verdict.refusal IS NOT NULL LIMIT 1;
  IF v_refusal IS NULL AND EXISTS (
       SELECT 1 FROM ledger.notes_sent(items, terminal_ids, kinds, note_counts) sent
         JOIN ledger.cassettes cassette
           ON (cassette.terminal_id, cassette.cassette_no) = (sent.terminal_id, sent.cassette_no)
        WHERE sent.kind = 'withdrawal'
        GROUP BY cassette.terminal_id, cassette.cassette_no, cassette.remaining_notes
       HAVING sum(sent.notes) > cassette.remaining_notes) THEN
    v_refusal := 'more notes than the cassette holds';
  END IF;
  IF v_refusal IS NOT NULL THEN
    RAISE EXCEPTION 'refused: %', v_refusal USING ERRCODE = 'insufficient_privilege';
  END IF;
  WITH moved AS (
    INSERT INTO ledger.note_movements
      SELECT sent.transaction_id, sent.terminal_id, sent.cassette_no, cassette.load_seq,
             cassette.denomination_minor,
             CASE WHEN sent.kind = 'withdrawal' THEN sent.notes ELSE -sent.notes END
        FROM ledger.notes_sent(items, terminal_ids, kinds, note_counts) sent
        JOIN ledger.cassettes cassette
          ON (cassette.terminal_id, cassette.cassette_no) = (sent.terminal_id, sent.cassette_no)
    RETURNING terminal_id, cassette_no, notes)
  UPDATE ledger.cassettes cassette
     SET dispensed_notes = cassette.dispensed_notes + per_cassette.notes
    FROM (SELECT terminal_id, cassette_no, sum(notes) AS notes FROM moved GROUP BY 1, 2)
         AS per_cassette
   WHERE (cassette.terminal_id, cassette.cassette_no)
       = (per_cassette.terminal_id, per_cassette.cassette_no);
END $$;

-- An operator's replenishment (the owner's tool, or an operator through the operations app):
-- the cassette taken out (its notes left and those in the reject bin go back to the vault) and
-- one of `p_notes` notes put in. The switch role may call it: it moves money only between two
-- house accounts, and every call is journalled and recorded.
-- The difference in money is posted between the terminal's cash account and the house vault
-- account of the currency and journalled like any transaction; the counts start again and
-- the replenishment is recorded. `p_denomination_minor`, when given, must be the cassette's.
CREATE OR REPLACE FUNCTION ledger.replenish_cassette(
  p_terminal_id text, p_cassette_no integer, p_notes integer, p_denomination_minor bigint,
  p_at timestamptz, p_by text
) RETURNS ledger.replenishments
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_terminal ledger.terminals;
  v_cassette ledger.cassettes;
  v_currency text;
  v_vault_id bigint;
  v_move_minor bigint;
  v_id bigint;
  v_lane integer;
  v_seq bigint;
  v_prev_hash bytea;
  v_row ledger.transactions;
  v_record ledger.replenishments;
  -- Dated by the policy's cutover, like every posting (not by the UTC calendar day).
  v_business_date date := ledger.business_day_of(p_at);
BEGIN
  IF p_notes < 0 THEN
    RAISE EXCEPTION 'a cassette cannot hold % notes', p_notes
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO v_terminal FROM ledger.terminals WHERE terminal_id = p_terminal_id;
  v_currency := (SELECT currency FROM ledger.cassettes
                  WHERE (terminal_id, cassette_no) = (p_terminal_id, p_cassette_no));
  IF v_currency IS NULL THEN
    RAISE EXCEPTION 'terminal % has no cassette %', p_terminal_id, p_cassette_no
      USING ERRCODE = 'no_data_found';
  END IF;
  INSERT INTO ledger.accounts (customer_id, account_number, type_code, currency)
    VALUES (0, 'VAULT-' || v_currency, 'funding', v_currency)
    ON CONFLICT (account_number) DO NOTHING;
  v_vault_id := (SELECT account_id FROM ledger.accounts WHERE account_number = 'VAULT-' || v_currency);
  -- Locks as post_batch takes them: accounts by id first, then the cassette, then a lane.
  PERFORM 1 FROM ledger.accounts WHERE account_id IN (v_terminal.cash_account_id, v_vault_id)
    ORDER BY account_id FOR UPDATE;
  SELECT * INTO STRICT v_cassette FROM ledger.cassettes
   WHERE (terminal_id, cassette_no) = (p_terminal_id, p_cassette_no) FOR UPDATE;
  IF p_denomination_minor IS DISTINCT FROM NULL
     AND p_denomination_minor <> v_cassette.denomination_minor THEN
    RAISE EXCEPTION 'cassette % of terminal % holds notes of %, not %', p_cassette_no,
      p_terminal_id, v_cassette.denomination_minor, p_denomination_minor
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  v_move_minor := (p_notes - v_cassette.remaining_notes - v_cassette.rejected_notes)::bigint
                  * v_cassette.denomination_minor;
  IF v_move_minor <> 0 THEN
    v_id := nextval('ledger.transaction_ids');
    SELECT block.lane, block.seq, block.prev_hash INTO v_lane, v_seq, v_prev_hash
      FROM ledger.open_block() block;
    v_row := ROW(v_id, 0, p_terminal_id, to_char(p_at AT TIME ZONE 'UTC', 'MMDDHH24MISS'),
                 v_id::text, 'replenishment', 'replenishment', 'approved', '00', abs(v_move_minor),
                 v_currency, abs(v_move_minor), v_currency, NULL, NULL,
                 v_business_date, p_at, '', '', '', '', NULL, NULL, NULL, NULL,
                 v_lane, v_seq, '\x'::bytea)::ledger.transactions;
    -- Cash into the ATM is a debit of its cash account (withdrawals credit it), so the cash
    -- account's balance is minus the notes the host counts in the ATM.
    v_row.leaf := ledger.leaf(v_row, (
      SELECT string_agg(ledger.leg_line(account.account_id, account.customer_id,
                                        leg.amount_minor, account.currency),
                        E'\n' ORDER BY account.account_id)
        FROM (VALUES (v_terminal.cash_account_id, -v_move_minor), (v_vault_id, v_move_minor))
             AS leg(account_id, amount_minor)
        JOIN ledger.accounts account USING (account_id)));
    INSERT INTO ledger.transactions SELECT (v_row).*;
    INSERT INTO ledger.postings
      SELECT v_id, account.account_id, account.customer_id, leg.amount_minor, account.currency
        FROM (VALUES (v_terminal.cash_account_id, -v_move_minor), (v_vault_id, v_move_minor))
             AS leg(account_id, amount_minor)
        JOIN ledger.accounts account USING (account_id);
    UPDATE ledger.accounts SET balance_minor = balance_minor + CASE account_id
        WHEN v_vault_id THEN v_move_minor ELSE -v_move_minor END
     WHERE account_id IN (v_terminal.cash_account_id, v_vault_id);
    PERFORM ledger.close_block(v_lane, v_seq, v_prev_hash, now(), 1, v_row.leaf);
  END IF;
  UPDATE ledger.cassettes SET loaded_notes = p_notes, dispensed_notes = 0, rejected_notes = 0,
         load_seq = load_seq + 1, loaded_at = p_at
   WHERE (terminal_id, cassette_no) = (p_terminal_id, p_cassette_no);
  INSERT INTO ledger.replenishments (terminal_id, cassette_no, load_seq, replenished_at,
                                     replenished_by, currency, denomination_minor, loaded_notes,
                                     previous_loaded_notes, previous_dispensed_notes,
                                     previous_rejected_notes, previous_remaining_notes,
                                     transaction_id)
    VALUES (p_terminal_id, p_cassette_no, v_cassette.load_seq + 1, p_at, p_by, v_currency,
            v_cassette.denomination_minor, p_notes, v_cassette.loaded_notes,
            v_cassette.dispensed_notes, v_cassette.rejected_notes, v_cassette.remaining_notes,
            v_id)
  RETURNING * INTO v_record;
  -- After the writes, as post_batch checks: a closed day's totals and cassette positions are
  -- frozen, so nothing, not even a count that moves no money, is dated into one.
  PERFORM ledger.refuse_closed_days(ARRAY[v_business_date]);
  RETURN v_record;
END $$;

-- Every terminal's cassettes, for the fleet view and the metrics (no card data).
CREATE OR REPLACE FUNCTION ledger.cash_state()
  RETURNS TABLE (terminal_id text, cassette_no integer, currency text,
                 denomination_minor bigint, loaded_notes integer, dispensed_notes integer,
                 rejected_notes integer, remaining_notes integer, low_notes integer)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT cassette.terminal_id, cassette.cassette_no, cassette.currency,
         cassette.denomination_minor, cassette.loaded_notes, cassette.dispensed_notes,
         cassette.rejected_notes, cassette.remaining_notes, cassette.low_notes
    FROM ledger.cassettes cassette ORDER BY cassette.terminal_id, cassette.cassette_no
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.cash_state(),
  ledger.replenish_cassette(text, integer, integer, bigint, timestamptz, text) TO ledger_switch;


-- Terminal balancing and the business day (0007_balancing).

-- The business day `p_at` falls in, by the policy's cutover (as ledger.rules.business_day).
CREATE OR REPLACE FUNCTION ledger.business_day_of(p_at timestamptz) RETURNS date
  LANGUAGE sql STABLE AS $$
  SELECT ((p_at AT TIME ZONE 'UTC') - policy.business_day_cutover)::date FROM ledger.policy
$$;

-- Refuses (SQLSTATE KB001) a write dated on a closed business day. post_batch calls it after
-- its inserts: a close waits for the writes in flight (it locks the journal in SHARE mode), and
-- a write that began before the close but reaches this check after it sees the closed day here.
CREATE OR REPLACE FUNCTION ledger.refuse_closed_days(p_business_dates date[]) RETURNS void
  LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_closed date := (SELECT min(closed_day.business_date) FROM ledger.closed_days closed_day
                     WHERE closed_day.business_date = ANY (p_business_dates));
BEGIN
  IF v_closed IS NOT NULL THEN
    RAISE EXCEPTION 'refused: business day % is closed', v_closed USING ERRCODE = 'KB001';
  END IF;
END $$;

-- The host's figures for one terminal, business day and currency, recomputed from the journal:
-- approved withdrawals and the reversals that gave their money back (amounts from the postings
-- on the terminal's cash account, so they match the audit journal), approved transfers and the
-- reversals that moved their money back, approved inquiries (whatever their currency: they
-- move none). Reversals count on the day of their own answer. No deposits: credits are 0.
CREATE OR REPLACE FUNCTION ledger.host_figures(p_terminal_id text, p_business_date date,
                                               p_currency text) RETURNS ledger.day_figures
  LANGUAGE sql STABLE AS $$
  WITH day AS (
    SELECT txn.kind, original.kind AS original_kind, txn.currency = p_currency AS ours,
           txn.amount_minor, cash.amount_minor AS cash_minor
      FROM ledger.transactions txn
      JOIN ledger.terminals term ON term.terminal_id = txn.terminal_id
      LEFT JOIN ledger.postings cash
        ON cash.transaction_id = txn.transaction_id AND cash.account_id = term.cash_account_id
      LEFT JOIN ledger.transactions original
        ON txn.kind = 'reversal'
       AND (original.customer_id, original.terminal_id, original.transmission_time,
            original.stan, original.message_class)
         = (txn.customer_id, txn.terminal_id, txn.original_transmission_time, txn.original_stan,
            txn.original_message_class)
     WHERE txn.terminal_id = p_terminal_id AND txn.business_date = p_business_date
       AND txn.outcome = 'approved'
       AND txn.kind IN ('withdrawal', 'transfer', 'inquiry', 'reversal')),
  counted AS (
    SELECT
      count(*) FILTER (WHERE kind = 'withdrawal' AND ours AND cash_minor IS NOT NULL) AS debits,
      count(*) FILTER (WHERE kind = 'reversal' AND original_kind = 'withdrawal' AND ours
                         AND cash_minor IS NOT NULL) AS debit_reversals,
      count(*) FILTER (WHERE kind = 'transfer' AND ours) AS transfers,
      count(*) FILTER (WHERE kind = 'reversal' AND original_kind = 'transfer' AND ours
                         AND amount_minor > 0) AS transfer_reversals,
      count(*) FILTER (WHERE kind = 'inquiry') AS inquiries,
      coalesce(sum(cash_minor) FILTER (WHERE kind = 'withdrawal' AND ours), 0)::bigint
        AS debits_minor,
      coalesce(-sum(cash_minor) FILTER (WHERE kind = 'reversal' AND original_kind = 'withdrawal'
                                          AND ours), 0)::bigint AS debit_reversals_minor
      FROM day)
  SELECT ROW(0, 0, counted.debits, counted.debit_reversals, counted.transfers,
             counted.transfer_reversals, counted.inquiries, 0, 0, counted.debits_minor,
             counted.debit_reversals_minor,
             counted.debits_minor - counted.debit_reversals_minor)::ledger.day_figures
    FROM counted
$$;

-- The host's cassette counters since each cassette's last load, as F124 carries them.
CREATE OR REPLACE FUNCTION ledger.host_cassettes(p_terminal_id text, p_currency text)
  RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'cassette_no', cassette.cassette_no, 'denomination_minor', cassette.denomination_minor,
           'dispensed', cassette.dispensed_notes, 'rejected', cassette.rejected_notes,
           'remaining', cassette.remaining_notes) ORDER BY cassette.cassette_no), '[]')
    FROM ledger.cassettes cassette
   WHERE cassette.terminal_id = p_terminal_id AND cassette.currency = p_currency
$$;

-- The wire fields in which two sets of figures differ, in field order.
CREATE OR REPLACE FUNCTION ledger.figures_differences(
  terminal ledger.day_figures, host ledger.day_figures
) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(array_agg(field.name ORDER BY field.ordinal), '{}') FROM (VALUES
    (1, 'F74', terminal.credits, host.credits),
    (2, 'F75', terminal.credit_reversals, host.credit_reversals),
    (3, 'F76', terminal.debits, host.debits),
    (4, 'F77', terminal.debit_reversals, host.debit_reversals),
    (5, 'F78', terminal.transfers, host.transfers),
    (6, 'F79', terminal.transfer_reversals, host.transfer_reversals),
    (7, 'F80', terminal.inquiries, host.inquiries),
    (8, 'F86', terminal.credits_minor, host.credits_minor),
    (9, 'F87', terminal.credit_reversals_minor, host.credit_reversals_minor),
    (10, 'F88', terminal.debits_minor, host.debits_minor),
    (11, 'F89', terminal.debit_reversals_minor, host.debit_reversals_minor),
    (12, 'F97', terminal.net_minor, host.net_minor)) AS field(ordinal, name, theirs, ours)
   WHERE field.theirs IS DISTINCT FROM field.ours
$$;

-- One 0500: the terminal's figures (p_figures: F74-F80, F86-F89, then F97 signed, 12 values)
-- and cassette counters (p_cassettes: one row per F124 entry: slot, denomination, dispensed,
-- rejected, remaining) for its business day and currency. Records the rejected notes onto the
-- cassettes (a counter since the load: it never goes down, and never past the notes left),
-- compares with the host's figures and dispensed counters, records the balancing and returns
-- {balancing_id, balanced, differences, host_figures, host_cassettes}. Refuses, writing
-- nothing: KB001 a closed day, KB002 a day not begun yet (by the database's clock), KB003
-- rejected counts that cannot be, KB004 a currency that is not the terminal's cash.
CREATE OR REPLACE FUNCTION ledger.record_balancing(
  p_terminal_id text, p_business_date date, p_currency text, p_transmission_time text,
  p_stan text, p_figures bigint[], p_cassettes bigint[], p_at timestamptz
) RETURNS jsonb
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
DECLARE
  v_terminal ledger.terminals;
  v_theirs ledger.day_figures;
  v_ours ledger.day_figures;
  v_sent jsonb;
  v_host jsonb;
  v_differences text[];
  v_id bigint;
BEGIN
  IF cardinality(p_figures) <> 12
     OR EXISTS (SELECT FROM unnest(p_figures) figure WHERE figure IS NULL)
     OR (cardinality(p_cassettes) > 0 AND array_length(p_cassettes, 2) <> 5) THEN
    RAISE EXCEPTION 'twelve figures and five counters per cassette'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO v_terminal FROM ledger.terminals WHERE terminal_id = p_terminal_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown terminal %', p_terminal_id USING ERRCODE = 'no_data_found';
  END IF;
  IF EXISTS (SELECT FROM ledger.closed_days closed_day
              WHERE closed_day.business_date = p_business_date) THEN
    RAISE EXCEPTION 'business day % is closed', p_business_date USING ERRCODE = 'KB001';
  END IF;
  IF p_business_date > ledger.business_day_of(now()) THEN
    RAISE EXCEPTION 'business day % has not begun', p_business_date USING ERRCODE = 'KB002';
  END IF;
  IF (SELECT account.currency FROM ledger.accounts account
       WHERE account.account_id = v_terminal.cash_account_id) <> p_currency
     OR EXISTS (SELECT FROM ledger.cassettes cassette
                 WHERE cassette.terminal_id = p_terminal_id
                   AND cassette.currency <> p_currency) THEN
    RAISE EXCEPTION 'terminal % holds no cash in %', p_terminal_id, p_currency
      USING ERRCODE = 'KB004';
  END IF;
  -- Locks as post_batch takes them (the cash account, then the cassettes): the counts read
  -- below are those of the last committed withdrawal.
  PERFORM 1 FROM ledger.accounts WHERE account_id = v_terminal.cash_account_id FOR UPDATE;
  v_sent := coalesce((SELECT jsonb_agg(jsonb_build_object(
              'cassette_no', p_cassettes[entry][1], 'denomination_minor', p_cassettes[entry][2],
              'dispensed', p_cassettes[entry][3], 'rejected', p_cassettes[entry][4],
              'remaining', p_cassettes[entry][5]) ORDER BY entry)
              FROM generate_subscripts(p_cassettes, 1) AS entry), '[]');
  IF EXISTS (SELECT FROM jsonb_to_recordset(v_sent)
                           AS sent(cassette_no integer, denomination_minor bigint, rejected bigint)
               JOIN ledger.cassettes cassette
                 ON (cassette.terminal_id, cassette.cassette_no, cassette.denomination_minor)
                  = (p_terminal_id, sent.cassette_no, sent.denomination_minor)
              WHERE sent.rejected < cassette.rejected_notes
                 OR sent.rejected > cassette.loaded_notes - cassette.dispensed_notes) THEN
    RAISE EXCEPTION 'rejected notes fewer than recorded, or more than the cassette holds'
      USING ERRCODE = 'KB003';
  END IF;
  UPDATE ledger.cassettes cassette SET rejected_notes = sent.rejected
    FROM jsonb_to_recordset(v_sent) AS sent(cassette_no integer, denomination_minor bigint,
                                            rejected integer)
   WHERE (cassette.terminal_id, cassette.cassette_no, cassette.denomination_minor)
       = (p_terminal_id, sent.cassette_no, sent.denomination_minor)
     AND cassette.rejected_notes <> sent.rejected;
  v_theirs := ROW(p_figures[1], p_figures[2], p_figures[3], p_figures[4], p_figures[5],
                  p_figures[6], p_figures[7], p_figures[8], p_figures[9], p_figures[10],
                  p_figures[11], p_figures[12])::ledger.day_figures;
  v_ours := ledger.host_figures(p_terminal_id, p_business_date, p_currency);
  v_host := ledger.host_cassettes(p_terminal_id, p_currency);
  v_differences := ledger.figures_differences(v_theirs, v_ours);
  -- The dispensed counters balance when the same cassettes hold the same denominations and
  -- have dispensed the same notes.
  IF (SELECT coalesce(array_agg(ARRAY[sent.cassette_no, sent.denomination_minor, sent.dispensed]
                                ORDER BY sent.cassette_no), '{}')
        FROM jsonb_to_recordset(v_sent)
             AS sent(cassette_no bigint, denomination_minor bigint, dispensed bigint))
     IS DISTINCT FROM
     (SELECT coalesce(array_agg(ARRAY[host_cassette.cassette_no,
                                      host_cassette.denomination_minor, host_cassette.dispensed]
                                ORDER BY host_cassette.cassette_no), '{}')
        FROM jsonb_to_recordset(v_host)
             AS host_cassette(cassette_no bigint, denomination_minor bigint,
                              dispensed bigint)) THEN
    v_differences := v_differences || 'F124'::text;
  END IF;
  INSERT INTO ledger.balancings (terminal_id, business_date, currency, transmission_time, stan,
                                 terminal_figures, host_figures, terminal_cassettes,
                                 host_cassettes, result, differences, received_at)
    VALUES (p_terminal_id, p_business_date, p_currency, p_transmission_time, p_stan, v_theirs,
            v_ours, v_sent, v_host,
            CASE WHEN cardinality(v_differences) = 0 THEN 'balanced' ELSE 'imbalance' END,
            v_differences, p_at)
  RETURNING balancing_id INTO v_id;
  RETURN jsonb_build_object('balancing_id', v_id, 'balanced', cardinality(v_differences) = 0,
                            'differences', to_jsonb(v_differences),
                            'host_figures', to_jsonb(v_ours), 'host_cassettes', v_host);
END $$;

-- Per terminal, its latest balancing when that one did not balance (an alert rule's input:
-- a terminal that balanced since is not listed). Received since `p_since`.
CREATE OR REPLACE FUNCTION ledger.latest_imbalances(p_since timestamptz)
  RETURNS TABLE (terminal_id text, business_date date, currency text, differences text[],
                 received_at timestamptz, balancing_id bigint)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT latest.terminal_id, latest.business_date, latest.currency::text, latest.differences,
         latest.received_at, latest.balancing_id
    FROM (SELECT DISTINCT ON (terminal_id) * FROM ledger.balancings
           WHERE received_at >= p_since ORDER BY terminal_id, balancing_id DESC) latest
   WHERE latest.result = 'imbalance' ORDER BY latest.terminal_id
$$;

-- Each cassette of a terminal as it stood at `p_at`: its load then (the last replenishment at
-- or before it) and the notes dispensed from that load by requests recorded before it.
CREATE OR REPLACE FUNCTION ledger.cassettes_at(p_terminal_id text, p_at timestamptz)
  RETURNS TABLE (cassette_no smallint, currency text, denomination_minor bigint,
                 load_seq integer, loaded_notes integer, dispensed_notes integer)
  LANGUAGE sql STABLE AS $$
  SELECT latest_load.cassette_no, latest_load.currency::text, latest_load.denomination_minor,
         latest_load.load_seq, latest_load.loaded_notes,
         coalesce((SELECT sum(movement.notes) FROM ledger.note_movements movement
                     JOIN ledger.transactions txn ON txn.transaction_id = movement.transaction_id
                    WHERE (movement.terminal_id, movement.cassette_no, movement.load_seq)
                        = (latest_load.terminal_id, latest_load.cassette_no, latest_load.load_seq)
                      AND txn.recorded_at < p_at), 0)::integer
    FROM (SELECT DISTINCT ON (replenishment.cassette_no) replenishment.*
            FROM ledger.replenishments replenishment
           WHERE replenishment.terminal_id = p_terminal_id
             AND replenishment.replenished_at <= p_at
           ORDER BY replenishment.cassette_no, replenishment.load_seq DESC) latest_load
   ORDER BY latest_load.cassette_no
$$;

-- Closes a business day that is over by the database's clock (now at or after the next day's
-- cutover): freezes its totals per terminal, currency and kind from the postings, and its
-- cassette positions at open and close. From then on no posting may carry its date. Returns
-- false, changing nothing, when the day was closed already. The owner's tool only.
CREATE OR REPLACE FUNCTION ledger.close_business_day(p_business_date date, p_by text)
  RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  v_cutover time := (SELECT business_day_cutover FROM ledger.policy);
  v_start timestamptz := (p_business_date + v_cutover) AT TIME ZONE 'UTC';
  v_end timestamptz := (p_business_date + 1 + v_cutover) AT TIME ZONE 'UTC';
BEGIN
  IF now() < v_end THEN
    RAISE EXCEPTION 'business day % is not over until % UTC', p_business_date,
      to_char(v_end AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') USING ERRCODE = 'KB005';
  END IF;
  -- Writes in flight finish first, and none starts until this commits (post_batch then finds
  -- the day closed): the totals are the day's last word.
  LOCK TABLE ledger.transactions IN SHARE MODE;
  INSERT INTO ledger.closed_days VALUES (p_business_date, v_cutover, now(), p_by)
    ON CONFLICT (business_date) DO NOTHING;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO ledger.day_totals
    SELECT p_business_date, term.terminal_id, cash.currency, per_kind.kind, per_kind.approved,
           per_kind.approved_minor, per_kind.reversals, per_kind.reversed_minor,
           per_kind.approved_minor - per_kind.reversed_minor
      FROM ledger.terminals term
      JOIN ledger.accounts account ON account.account_id = term.cash_account_id
      CROSS JOIN LATERAL (SELECT account.currency::text AS currency) cash
      CROSS JOIN LATERAL ledger.host_figures(term.terminal_id, p_business_date, cash.currency)
                         AS figures
      CROSS JOIN LATERAL (VALUES
        ('withdrawal', figures.debits, figures.debits_minor, figures.debit_reversals,
         figures.debit_reversals_minor),
        ('transfer', figures.transfers, 0::bigint, figures.transfer_reversals, 0::bigint),
        ('inquiry', figures.inquiries, 0::bigint, 0::bigint, 0::bigint))
        AS per_kind(kind, approved, approved_minor, reversals, reversed_minor)
     WHERE figures.debits + figures.debit_reversals + figures.transfers
           + figures.transfer_reversals + figures.inquiries > 0;
  INSERT INTO ledger.day_cassettes
    SELECT p_business_date, term.terminal_id, cassette.cassette_no, edge.at_open,
           cassette.currency, cassette.denomination_minor, cassette.load_seq,
           cassette.loaded_notes, cassette.dispensed_notes
      FROM ledger.terminals term
      CROSS JOIN (VALUES (true, v_start), (false, v_end)) AS edge(at_open, at)
      CROSS JOIN LATERAL ledger.cassettes_at(term.terminal_id, edge.at) cassette;
  RETURN true;
END $$;

-- The settlement report of a closed day (NULL when the day is not closed): per terminal, the
-- host's totals frozen at close, the figures of its last 0500 for the day and their difference
-- (terminal minus host), that balancing's verdict ('none' without an 0500), and its cassettes
-- at the day's open and close. Read by the owner's tool and the operations app.
CREATE OR REPLACE FUNCTION ledger.settlement_report(p_business_date date) RETURNS jsonb
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ledger, pg_temp AS $$
  SELECT jsonb_build_object(
    'business_date', closed_day.business_date, 'closed_at', closed_day.closed_at,
    'closed_by', closed_day.closed_by, 'cutover', to_char(closed_day.cutover, 'HH24:MI'),
    'terminals', coalesce((
      SELECT jsonb_agg(per_terminal.entry ORDER BY per_terminal.terminal_id) FROM (
      SELECT term.terminal_id, jsonb_build_object(
        'terminal_id', term.terminal_id, 'currency', account.currency,
        'host', to_jsonb(host.figures), 'terminal', to_jsonb(last.terminal_figures),
        'difference', CASE WHEN last.balancing_id IS NOT NULL THEN (
          SELECT jsonb_object_agg(theirs.key, theirs.value::bigint - ours.value::bigint)
            FROM jsonb_each_text(to_jsonb(last.terminal_figures)) theirs
            JOIN jsonb_each_text(to_jsonb(host.figures)) ours USING (key)) END,
        'result', coalesce(last.result, 'none'), 'differences', to_jsonb(last.differences),
        'terminal_cassettes', last.terminal_cassettes,
        'cassettes_open', (SELECT coalesce(jsonb_agg(to_jsonb(cassette) - 'business_date'
                                                     - 'terminal_id' - 'at_open'
                                                     ORDER BY cassette.cassette_no), '[]')
                             FROM ledger.day_cassettes cassette
                            WHERE (cassette.business_date, cassette.terminal_id, cassette.at_open)
                                = (closed_day.business_date, term.terminal_id, true)),
        'cassettes_close', (SELECT coalesce(jsonb_agg(to_jsonb(cassette) - 'business_date'
                                                      - 'terminal_id' - 'at_open'
                                                      ORDER BY cassette.cassette_no), '[]')
                              FROM ledger.day_cassettes cassette
                             WHERE (cassette.business_date, cassette.terminal_id, cassette.at_open)
                                 = (closed_day.business_date, term.terminal_id, false))) AS entry
        FROM ledger.terminals term
        JOIN ledger.accounts account ON account.account_id = term.cash_account_id
        CROSS JOIN LATERAL (SELECT ROW(0, 0,
            coalesce(sum(day_total.approved_count) FILTER (WHERE day_total.kind = 'withdrawal'),
                     0),
            coalesce(sum(day_total.reversal_count) FILTER (WHERE day_total.kind = 'withdrawal'),
                     0),
            coalesce(sum(day_total.approved_count) FILTER (WHERE day_total.kind = 'transfer'), 0),
            coalesce(sum(day_total.reversal_count) FILTER (WHERE day_total.kind = 'transfer'), 0),
            coalesce(sum(day_total.approved_count) FILTER (WHERE day_total.kind = 'inquiry'), 0),
            0, 0,
            coalesce(sum(day_total.approved_minor) FILTER (WHERE day_total.kind = 'withdrawal'),
                     0),
            coalesce(sum(day_total.reversed_minor) FILTER (WHERE day_total.kind = 'withdrawal'),
                     0),
            coalesce(sum(day_total.net_minor) FILTER (WHERE day_total.kind = 'withdrawal'), 0)
          )::ledger.day_figures AS figures
            FROM ledger.day_totals day_total
           WHERE (day_total.business_date, day_total.terminal_id)
               = (closed_day.business_date, term.terminal_id)) host
        LEFT JOIN LATERAL (SELECT balancing.* FROM ledger.balancings balancing
                            WHERE (balancing.terminal_id, balancing.business_date)
                                = (term.terminal_id, closed_day.business_date)
                            ORDER BY balancing.balancing_id DESC LIMIT 1) last ON true
      ) per_terminal), '[]'))
    FROM ledger.closed_days closed_day WHERE closed_day.business_date = p_business_date
$$;

GRANT EXECUTE ON FUNCTION ledger.settlement_report(date) TO ledger_switch;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  ledger.record_balancing(text, date, text, text, text, bigint[], bigint[], timestamptz),
  ledger.latest_imbalances(timestamptz)
  TO ledger_switch;


-- Superseded signatures: none may be left in a database migrated before, for anyone to call.
-- A post_batch without the atcs array has no ATC check (0003_emv); one without the chip words
-- moves an ATC on the switch's say-so; one without note_counts moves no notes (0004_cash);
-- set_session_keys without the HSM's word copies keys.
DROP FUNCTION IF EXISTS ledger.post_batch(
  bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[], text[], bigint[],
  text[], text[], text[], text[], text[], text[], text[], text[], bigint[], bigint[], date[],
  timestamptz[], text[], text[], text[], text[], bigint[], bigint[], bigint[], boolean[], text[],
  integer[], date[], bigint[], integer[]);
DROP FUNCTION IF EXISTS ledger.post_batch(
  bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[], text[], bigint[],
  text[], text[], text[], text[], text[], text[], text[], text[], bigint[], bigint[], date[],
  timestamptz[], text[], text[], text[], text[], bigint[], bigint[], bigint[], boolean[], text[],
  integer[], date[], bigint[], integer[], integer[], bytea[]);
DROP FUNCTION IF EXISTS ledger.post_batch(
  bytea[], text[], text[], text[], text[], text[], text[], text[], bigint[], text[], bigint[],
  text[], text[], text[], text[], text[], text[], text[], text[], bigint[], bigint[], date[],
  timestamptz[], text[], text[], text[], text[], bigint[], bigint[], bigint[], boolean[], text[],
  integer[], date[], bigint[], integer[], integer[], bytea[], bytea[]);
DROP FUNCTION IF EXISTS ledger.set_session_keys(text, text, text);
-- Traffic without its chip count (before 0006).
DROP FUNCTION IF EXISTS ledger.record_terminal_traffic(text, text[], timestamptz[], integer[],
  integer[], integer[], jsonb[], integer[], timestamptz[]);
DROP FUNCTION IF EXISTS ledger.authorisation_valid(
  ledger.authorisation_key, bytea, text, text, text, text, bytea, bigint, text);
-- post_batch's per-item helpers before it judged every item in one statement: whole-row
-- arguments cost a row built per call, and a composite type kept the items between statements.
DROP FUNCTION IF EXISTS ledger.card_after(ledger.cards, text, text, date, bigint,
                                          ledger.transactions, integer);
DROP FUNCTION IF EXISTS ledger.refusal(text, text, bigint, text, text, date, ledger.cards,
  ledger.terminals, ledger.transactions, ledger.accounts, ledger.accounts, bigint, ledger.policy,
  boolean, integer, text, date, bigint, integer, boolean, integer, text, date, bigint, integer,
  boolean);
DROP FUNCTION IF EXISTS ledger.authorisation_valid(
  ledger.authorisation_key, bytea, text, text, text, text, bytea, bigint, text, integer);
DROP FUNCTION IF EXISTS ledger.word_valid(ledger.authorisation_key, bytea, text[]);
DROP TYPE IF EXISTS ledger.post_item;
