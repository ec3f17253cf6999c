-- Version 2 is reserved for a migration another branch adds in parallel (the operations branch
-- was given version 3). Migrations run in version order without gaps, so until that one lands
-- this file holds its place. Replace it with that branch's file on merge.
SELECT 1;
