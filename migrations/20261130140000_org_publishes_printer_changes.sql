-- The org service owns `printers` and `printer_security`; what their changes announce
-- to the printer endpoint is now said by trigger functions of its own, on the channels
-- the relay listens to (`printworks_printer_revoked`, `printworks_printer_work`).
-- Before, the pairing and relay migrations had put triggers on these two tables,
-- running functions of their own. The behaviour is unchanged.

DROP TRIGGER printers_notify_unpaired ON printers;
DROP TRIGGER printer_security_notify ON printer_security;

CREATE FUNCTION org_notify_printer_unpaired() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.unpaired_at IS NULL AND NEW.unpaired_at IS NOT NULL THEN
        PERFORM pg_notify('printworks_printer_revoked', NEW.id::text);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER printers_notify_unpaired
    AFTER UPDATE OF unpaired_at ON printers
    FOR EACH ROW EXECUTE FUNCTION org_notify_printer_unpaired();

CREATE FUNCTION org_notify_printer_security() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('printworks_printer_work', NEW.printer_id::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER printer_security_notify
    AFTER INSERT OR UPDATE OF version ON printer_security
    FOR EACH ROW EXECUTE FUNCTION org_notify_printer_security();

-- The pairing service's function now serves only its own table.
CREATE OR REPLACE FUNCTION notify_printer_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL THEN
        PERFORM pg_notify('printworks_printer_revoked', NEW.printer_id::text);
    END IF;
    RETURN NEW;
END
$$;
