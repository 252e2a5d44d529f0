-- Issue 14.4: a sandbox's egress rules (E2B's network allowOut / denyOut
-- with allow_internet_access), JSON of internal/egress.Rules:
-- {"allow_internet":bool,"allow_out":[...],"deny_out":[...]}. NULL: no
-- rules beyond allow_internet_access (everything or nothing). Kept with the
-- record so that a resume or a move to another host applies them again.

-- +goose Up
ALTER TABLE sandboxes ADD COLUMN network jsonb;

-- +goose Down
ALTER TABLE sandboxes DROP COLUMN IF EXISTS network;
