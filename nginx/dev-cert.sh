#!/usr/bin/env bash
# A development certificate authority and a server certificate it signs, for nginx's TLS
# on a machine without a real domain. Clients trust ca.pem (curl --cacert, httpx verify).
#
#   nginx/dev-cert.sh [DIR]          # default nginx/dev-certs (git-ignored)
#
# Writes DIR/ca.pem, DIR/ca.key, DIR/cert.pem, DIR/key.pem. The server certificate names
# localhost, 127.0.0.1 and ::1, plus TOLLWAY_DEV_CERT_NAMES (comma-separated DNS names).
# Reuses what is there while the certificate is valid for another day. Never for production:
# there, certbot issues the certificate (README, "TLS with certbot").
set -euo pipefail
dir="${1:-$(dirname "$0")/dev-certs}"
mkdir -p "$dir"
cd "$dir"

if [ -s cert.pem ] && [ -s key.pem ] && [ -s ca.pem ] && openssl x509 -checkend 86400 -noout -in cert.pem >/dev/null 2>&1; then
  exit 0
fi

san="DNS:localhost,IP:127.0.0.1,IP:::1"
if [ -n "${TOLLWAY_DEV_CERT_NAMES:-}" ]; then
  IFS=',' read -ra names <<<"$TOLLWAY_DEV_CERT_NAMES"
  for name in "${names[@]}"; do san="$san,DNS:$name"; done
fi

umask 077
openssl req -x509 -new -newkey rsa:2048 -nodes -days 825 -sha256 \
  -keyout ca.key -out ca.pem -subj "/CN=Tollway development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout key.pem -out server.csr -subj "/CN=localhost" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
  "extendedKeyUsage=serverAuth" "subjectAltName=$san" >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -sha256 \
  -extfile server.ext -out cert.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem cert.pem
echo "dev-cert: wrote $(pwd)/cert.pem (trust $(pwd)/ca.pem)"
