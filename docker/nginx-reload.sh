#!/bin/sh
# Mounted into the nginx image's /docker-entrypoint.d/: reload nginx every 12 hours, so
# a certificate certbot renewed is picked up without a restart.
set -eu
(
  while sleep 43200; do
    nginx -s reload
  done
) &
