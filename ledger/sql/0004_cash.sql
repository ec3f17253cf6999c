-- ATM cash: each terminal's cassettes of notes, every note a request moved in or out of them,
-- and every replenishment. The money side stays in the postings (a withdrawal moves the card's
-- account to the terminal's cash account; a replenishment moves the vault's account to it);
-- these tables count the notes behind that money. The switch role reads the cassettes only
-- through ledger.read_batch and moves notes only through ledger.post_batch.

-- A cassette as loaded at its last replenishment. `remaining_notes` is derived, never stored
-- apart, so loaded = dispensed + rejected + remaining holds by construction. `rejected_notes`
-- are notes the dispenser picked but diverted to its reject bin: still in the ATM, not in the
-- cassette. `load_seq` counts replenishments: a reversal puts notes back only into the load
-- they came out of.
CREATE TABLE ledger.cassettes (
  terminal_id text NOT NULL REFERENCES ledger.terminals,
  -- The dispenser's slot, as the terminal numbers them (the note mix names them so).
  cassette_no smallint NOT NULL CHECK (cassette_no BETWEEN 1 AND 8),
  currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  denomination_minor bigint NOT NULL CHECK (denomination_minor > 0),
  loaded_notes integer NOT NULL CHECK (loaded_notes >= 0),
  dispensed_notes integer NOT NULL DEFAULT 0 CHECK (dispensed_notes >= 0),
  rejected_notes integer NOT NULL DEFAULT 0 CHECK (rejected_notes >= 0),
  remaining_notes integer GENERATED ALWAYS AS (loaded_notes - dispensed_notes - rejected_notes)
    STORED CHECK (remaining_notes >= 0),
  -- At or below this many notes left the cassette is low (an operator should replenish).
  low_notes integer NOT NULL DEFAULT 0 CHECK (low_notes >= 0),
  load_seq integer NOT NULL DEFAULT 0 CHECK (load_seq >= 0),
  loaded_at timestamptz,
  PRIMARY KEY (terminal_id, cassette_no)
) WITH (fillfactor = 70);

-- The notes each written request moved: positive out of the cassette (a withdrawal's mix),
-- negative back into it (a reversal or partial dispense). One row per request and cassette;
-- the denomination is kept so a repeat's answer names the mix as it was dispensed.
CREATE TABLE ledger.note_movements (
  transaction_id bigint NOT NULL REFERENCES ledger.transactions,
  terminal_id text NOT NULL,
  cassette_no smallint NOT NULL,
  load_seq integer NOT NULL,
  denomination_minor bigint NOT NULL CHECK (denomination_minor > 0),
  notes integer NOT NULL CHECK (notes <> 0),
  PRIMARY KEY (transaction_id, cassette_no),
  FOREIGN KEY (terminal_id, cassette_no) REFERENCES ledger.cassettes
);

-- Every replenishment, as the operator's tool recorded it: the counts the cassette had when it
-- was taken out, what was loaded, and the journal entry that moved the money (NULL when the
-- notes taken out were worth exactly the notes put in).
CREATE TABLE ledger.replenishments (
  replenishment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  terminal_id text NOT NULL,
  cassette_no smallint NOT NULL,
  load_seq integer NOT NULL CHECK (load_seq > 0),
  replenished_at timestamptz NOT NULL,
  replenished_by text NOT NULL,
  currency char(3) NOT NULL,
  denomination_minor bigint NOT NULL CHECK (denomination_minor > 0),
  loaded_notes integer NOT NULL CHECK (loaded_notes >= 0),
  previous_loaded_notes integer NOT NULL,
  previous_dispensed_notes integer NOT NULL,
  previous_rejected_notes integer NOT NULL,
  previous_remaining_notes integer NOT NULL,
  transaction_id bigint REFERENCES ledger.transactions,
  UNIQUE (terminal_id, cassette_no, load_seq),
  FOREIGN KEY (terminal_id, cassette_no) REFERENCES ledger.cassettes
);

CREATE TRIGGER no_update_delete BEFORE UPDATE OR DELETE ON ledger.note_movements
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON ledger.note_movements
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_update_delete BEFORE UPDATE OR DELETE ON ledger.replenishments
  FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON ledger.replenishments
  FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- A replenishment is journalled like any money movement.
ALTER TABLE ledger.transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE ledger.transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
  'inquiry', 'withdrawal', 'transfer', 'reversal', 'pin', 'decline', 'opening', 'replenishment'));

-- The house owns the cash: no customer's rows here, so row-level security opens nothing to any
-- role but the owner.
ALTER TABLE ledger.cassettes ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.note_movements ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger.replenishments ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON ledger.cassettes, ledger.note_movements, ledger.replenishments FROM ledger_switch;
