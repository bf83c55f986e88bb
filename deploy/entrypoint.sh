#!/bin/sh
# Builds the broker URLs from compose secrets, so that no password is ever in the
# compose file, an image or the environment given to `docker compose`.
#   BATON_BROKER_USER       this process's broker account
#   /run/secrets/broker_password    its password (URL-safe characters)
#   /run/secrets/operator_password  the audit job's administrator password
set -eu

host="${BATON_BROKER_HOST:-rabbitmq}"
vhost="${BATON_BROKER_VHOST:-baton}"

if [ -r /run/secrets/broker_password ]; then
    password="$(cat /run/secrets/broker_password)"
    AMQP_URL="amqp://${BATON_BROKER_USER}:${password}@${host}:5672/${vhost}"
    export AMQP_URL
fi
if [ -r /run/secrets/operator_password ]; then
    password="$(cat /run/secrets/operator_password)"
    BATON_MANAGEMENT_URL="http://${BATON_OPERATOR_USER:-operator}:${password}@${host}:15672/"
    export BATON_MANAGEMENT_URL
fi

exec "$@"
