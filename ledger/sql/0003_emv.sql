-- EMV chip cards: the issuer's profile of each chip card, and the card's last application
-- transaction counter (ATC, tag 9F36). Columns of the card's own row, so the state the switch
-- reads (to_jsonb of the card) carries them, and a write that moves the ATC changes the card's
-- xmin: a request decided on the card as it was is decided again (see ledger.post_batch).

ALTER TABLE ledger.cards
  -- The issuer master key for application cryptograms the card's keys derive from: a key block
  -- under the LMK (role IMK_AC), never a clear key. NULL: not a chip card the issuer profiled.
  ADD COLUMN emv_imk_ac text,
  -- The PAN sequence number (tag 5F34) the card's key derivation uses; '00' when it has none.
  ADD COLUMN emv_psn text CHECK (emv_psn ~ '^[0-9]{2}$'),
  -- The card's scheme: how its issuer application data (9F10) names the cryptogram version.
  ADD COLUMN emv_scheme text CHECK (emv_scheme IN ('visa', 'mastercard')),
  -- The cryptogram version, for cards whose 9F10 does not follow their scheme's layout; NULL:
  -- the version the card names in 9F10.
  ADD COLUMN emv_cvn smallint CHECK (emv_cvn BETWEEN 1 AND 255),
  -- Whether a read of this chip card by its magnetic stripe may be authorised.
  ADD COLUMN emv_fallback_allowed boolean NOT NULL DEFAULT false,
  -- The highest ATC of a verified cryptogram, moved only forward by ledger.post_batch in the
  -- transaction that writes the request; NULL until the card's first. Never reset by a reload
  -- of the fixtures, as money is not: a reset would let every old cryptogram be replayed.
  ADD COLUMN emv_last_atc integer CHECK (emv_last_atc BETWEEN 0 AND 65535),
  ADD CONSTRAINT cards_emv_profile_whole CHECK (
    (emv_imk_ac IS NULL) = (emv_psn IS NULL) AND (emv_imk_ac IS NULL) = (emv_scheme IS NULL)
    AND (emv_cvn IS NULL OR emv_imk_ac IS NOT NULL));
