"""The ledger's uniqueness becomes (request_id, created_at), the key a table partitioned by
created_at can enforce (0011). Both keys hold here, so replicas of the previous release
(``ON CONFLICT (request_id)``) and of this one (``ON CONFLICT (request_id, created_at)``)
both write while this release rolls out; 0011 then drops the old key
(docs/operators/ledger-partitions.md, "Upgrading")."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0010_batch_pricing")]

    operations = [
        migrations.AddConstraint(
            model_name="usagerecord",
            constraint=models.UniqueConstraint(fields=("request_id", "created_at"), name="usage_request_once"),
        ),
    ]
