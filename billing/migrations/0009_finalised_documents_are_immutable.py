"""Finalised invoices become "open" (the payment state machine), and Postgres itself refuses
to change a finalised invoice, its lines or an issued credit note: the last line behind the
models' own guards (docs/architecture.md, "Invariants"). SQLite (the embedded default) has only the models'."""

from django.db import migrations

# Columns a finalised invoice may still change (billing.models.INVOICE_STATE_FIELDS).
MUTABLE = "ARRAY['status','paid_on','payment_reference','status_changed_at','status_changed_by','voided_at','void_reason']"

CREATE = f"""
CREATE OR REPLACE FUNCTION billing_invoice_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status = 'draft' THEN
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RAISE EXCEPTION 'invoice % is final: it cannot be deleted', OLD.number USING ERRCODE = 'restrict_violation';
  END IF;
  IF (to_jsonb(NEW) - {MUTABLE}) IS DISTINCT FROM (to_jsonb(OLD) - {MUTABLE}) THEN
    RAISE EXCEPTION 'invoice % is final: only its payment state can change', OLD.number
      USING ERRCODE = 'restrict_violation';
  END IF;
  IF NEW.status <> OLD.status AND NOT (
      (OLD.status = 'open' AND NEW.status IN ('paid', 'uncollectible', 'void'))
      OR (OLD.status = 'uncollectible' AND NEW.status IN ('paid', 'void'))) THEN
    RAISE EXCEPTION 'invoice % is final (%): it cannot become %', OLD.number, OLD.status, NEW.status
      USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION billing_invoiceline_final() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  final_number text;
BEGIN
  SELECT number INTO final_number FROM billing_invoice
   WHERE status <> 'draft'
     AND id IN (CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.invoice_id END,
                CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.invoice_id END)
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'invoice % is final: its lines cannot change', final_number USING ERRCODE = 'restrict_violation';
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION billing_creditnote_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'credit note % is final once issued', OLD.number USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER billing_invoice_final BEFORE UPDATE OR DELETE ON billing_invoice
  FOR EACH ROW EXECUTE FUNCTION billing_invoice_final();
CREATE TRIGGER billing_invoiceline_final BEFORE INSERT OR UPDATE OR DELETE ON billing_invoiceline
  FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_final();
CREATE TRIGGER billing_creditnote_final BEFORE UPDATE OR DELETE ON billing_creditnote
  FOR EACH ROW EXECUTE FUNCTION billing_creditnote_final();
"""

DROP = """
DROP TRIGGER IF EXISTS billing_creditnote_final ON billing_creditnote;
DROP TRIGGER IF EXISTS billing_invoiceline_final ON billing_invoiceline;
DROP TRIGGER IF EXISTS billing_invoice_final ON billing_invoice;
DROP FUNCTION IF EXISTS billing_creditnote_final();
DROP FUNCTION IF EXISTS billing_invoiceline_final();
DROP FUNCTION IF EXISTS billing_invoice_final();
"""


def finalized_to_open(apps, schema_editor):
    apps.get_model("billing", "Invoice")._base_manager.filter(status="finalized").update(status="open")


def open_to_finalized(apps, schema_editor):
    apps.get_model("billing", "Invoice")._base_manager.filter(status__in=["open", "paid", "uncollectible"]).update(
        status="finalized"
    )


def triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def no_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("billing", "0008_finance_documents")]

    operations = [
        migrations.RunPython(finalized_to_open, open_to_finalized, elidable=False),
        migrations.RunPython(triggers, no_triggers),
    ]
