-- Issue 14.5: timeouts fire at their deadline, on whichever replica runs the
-- reaper.
--
-- The reaper sleeps until the earliest deadline (sandboxes.end_at of a
-- running sandbox) instead of polling. A deadline that comes earlier than
-- the one it sleeps for must wake it, whichever control-plane replica wrote
-- it: this trigger NOTIFYs channel capsule_sandbox_deadline (delivered at
-- commit to every LISTENing session) when a running sandbox gets a deadline
-- it did not have, or an earlier one. Deadlines that move later (activity:
-- a touch per second per busy sandbox) notify nobody; the reaper finds them
-- when it wakes for the old one.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION capsule_notify_sandbox_deadline() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'running' AND NEW.end_at IS NOT NULL AND (
        TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM 'running'
        OR OLD.end_at IS NULL OR NEW.end_at < OLD.end_at) THEN
        PERFORM pg_notify('capsule_sandbox_deadline', '');
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER sandboxes_deadline_notify
    AFTER INSERT OR UPDATE OF state, end_at ON sandboxes
    FOR EACH ROW EXECUTE FUNCTION capsule_notify_sandbox_deadline();

-- +goose Down
DROP TRIGGER IF EXISTS sandboxes_deadline_notify ON sandboxes;
DROP FUNCTION IF EXISTS capsule_notify_sandbox_deadline();
