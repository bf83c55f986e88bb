#!/usr/bin/env bash
# Makes the secrets `docker compose up` needs, under .baton/secrets (ignored by
# git): a random password per broker account, an Ed25519 signing key per
# service, the public key ring, and the broker definitions generated from the
# services' declarations. Run it once; run it again only to start over (it
# refuses to overwrite). Rotation is described in docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."

secrets=.baton/secrets
services=(edge users core notifications scheduler)
if [ -e "$secrets" ]; then
    echo "$secrets exists; remove it to start over" >&2
    exit 1
fi
umask 077
mkdir -p "$secrets/passwords" "$secrets/keys"

for account in "${services[@]}" operator; do
    .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(24))" \
        >"$secrets/passwords/$account"
done
for service in "${services[@]}"; do
    .venv/bin/python -c "from baton.cli import main; raise SystemExit(main())" \
        keys generate "$service" --dir "$secrets/keys" \
        --out "$secrets/keys/$service.key" --keyring "$secrets/keyring.json"
done
.venv/bin/python -c "from baton.cli import main; raise SystemExit(main())" \
    provision --vhost baton --passwords-dir "$secrets/passwords" \
    --operator operator --export "$secrets/definitions.json"
# Compose bind-mounts file secrets with their host mode and the containers run as
# other users: the files are world-readable inside a directory only we can enter.
chmod 0700 "$secrets" && find "$secrets" -type f -exec chmod 0644 {} +
echo "secrets are in $secrets; now: docker compose up"
