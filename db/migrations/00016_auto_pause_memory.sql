-- Issue 14: E2B's autoPauseMemory. A sandbox created with autoPause and
-- autoPauseMemory: false is paused at its timeout without its memory (a
-- filesystem-only pause: its disk is kept, the resume boots it cold).
-- Every other sandbox keeps its memory when the timeout pauses it.

-- +goose Up
ALTER TABLE sandboxes ADD COLUMN auto_pause_memory boolean NOT NULL DEFAULT true;

-- +goose Down
ALTER TABLE sandboxes DROP COLUMN auto_pause_memory;
