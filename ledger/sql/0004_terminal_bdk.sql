-- DUKPT terminals: the base derivation key their PIN pads were injected from, as a key block
-- under the LMK (opaque here, like the other key columns). NULL for terminals without DUKPT.
ALTER TABLE ledger.terminals ADD COLUMN bdk text;
