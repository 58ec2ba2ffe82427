-- Runner tokens: every server caches runner token hashes in memory. When a
-- runner's token changes (re-registration rotates it) or the runner is
-- deleted, this trigger announces it on pullwake_runner_tokens so every
-- server drops its cached hash at once, whoever wrote the row (a server, psql).
-- Payload: {"tenant_id": ..., "runner_id": ...}. The servers' reconcile timer
-- re-reads cached hashes too, so a lost notification is bounded as well.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION pw_notify_runner_token() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pullwake_runner_tokens',
                      json_build_object('tenant_id', OLD.tenant_id, 'runner_id', OLD.id)::text);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER runners_token_changed
    AFTER UPDATE OF token_hash ON runners
    FOR EACH ROW WHEN (OLD.token_hash IS DISTINCT FROM NEW.token_hash)
    EXECUTE FUNCTION pw_notify_runner_token();

CREATE TRIGGER runners_deleted
    AFTER DELETE ON runners
    FOR EACH ROW EXECUTE FUNCTION pw_notify_runner_token();

-- +goose Down
DROP TRIGGER runners_deleted ON runners;
DROP TRIGGER runners_token_changed ON runners;
DROP FUNCTION pw_notify_runner_token();
