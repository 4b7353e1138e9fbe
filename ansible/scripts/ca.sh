#!/usr/bin/env bash
# A small certificate authority per commune (openssl only). Keep DIR offline and backed up:
# ca.key signs every node's identity.
#
#   ca.sh DIR init COMMUNE [DAYS]        create the commune CA (ca.key 0600, ca.crt) and an empty CRL
#   ca.sh DIR node NODE_ID [DAYS]        client certificate for a node, CN = node id (the MQTT
#                                        user name through use_identity_as_username)
#   ca.sh DIR account NAME [DAYS]        client certificate for the commune server's account
#   ca.sh DIR broker HOST [HOST|IP...]   the broker's TLS server certificate (SANs: each name)
#   ca.sh DIR revoke NAME                revoke NAME's certificate (moved to DIR/revoked/) and
#                                        regenerate crl.pem; copy it to the broker
#   ca.sh DIR crl                        regenerate crl.pem (do it before it expires: CRL_DAYS)
#
# Output: DIR/issued/NAME.key (0600) and DIR/issued/NAME.crt; DIR/crl.pem. Copy ca.crt and
# crl.pem to the broker (commune_broker role), NAME.crt/NAME.key into the node's vault file.
set -euo pipefail
umask 077
DIR=${1:?usage: ca.sh DIR init|node|account|broker|revoke|crl ...}
CMD=${2:?usage: ca.sh DIR init|node|account|broker|revoke|crl ...}
shift 2
CRL_DAYS=${CRL_DAYS:-365}
NAME_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'

die() { echo "ca.sh: $*" >&2; exit 2; }
need_ca() {
  if [ ! -f "$DIR/ca.key" ] || [ ! -f "$DIR/ca.crt" ]; then die "no CA in $DIR (run: ca.sh $DIR init COMMUNE)"; fi
}
check_name() { [[ "$1" =~ $NAME_RE ]] || die "bad name '$1': letters, digits, '.', '_', '-'"; }

write_cnf() {
  cat >"$DIR/openssl.cnf" <<CNF
[ ca ]
default_ca = commune_ca
[ commune_ca ]
dir = $DIR
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
certificate = \$dir/ca.crt
private_key = \$dir/ca.key
serial = \$dir/serial
crlnumber = \$dir/crlnumber
default_md = sha256
default_crl_days = $CRL_DAYS
policy = policy_any
unique_subject = no
copy_extensions = copy
[ policy_any ]
commonName = supplied
organizationName = optional
[ client_ext ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ server_ext ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
}

gen_crl() {
  openssl ca -config "$DIR/openssl.cnf" -gencrl -out "$DIR/crl.pem" 2>/dev/null
  chmod 0644 "$DIR/crl.pem"
}

issue() { # $1 name  $2 extension section  $3 days  $4 optional SAN line
  local name=$1 ext=$2 days=$3 san=${4:-}
  check_name "$name"
  need_ca
  [ ! -f "$DIR/issued/$name.crt" ] || die "$name already has a certificate (revoke it first)"
  mkdir -p "$DIR/issued"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/issued/$name.key"
  local extfile
  extfile=$(mktemp)
  sed -n "/^\[ $ext \]/,/^\[/p" "$DIR/openssl.cnf" | sed '1d;/^\[/d' >"$extfile"
  [ -z "$san" ] || echo "subjectAltName = $san" >>"$extfile"
  openssl req -new -key "$DIR/issued/$name.key" -subj "/O=$(cat "$DIR/commune")/CN=$name" \
    -out "$DIR/issued/$name.csr"
  openssl ca -config "$DIR/openssl.cnf" -batch -notext -days "$days" \
    -extfile "$extfile" -in "$DIR/issued/$name.csr" -out "$DIR/issued/$name.crt" 2>/dev/null
  rm -f "$extfile" "$DIR/issued/$name.csr"
  chmod 0600 "$DIR/issued/$name.key"
  chmod 0644 "$DIR/issued/$name.crt"
  echo "$DIR/issued/$name.crt"
}

case "$CMD" in
  init)
    commune=${1:?usage: ca.sh DIR init COMMUNE [DAYS]}; days=${2:-3650}
    check_name "$commune"
    [ ! -f "$DIR/ca.key" ] || die "$DIR already holds a CA"
    mkdir -p "$DIR/newcerts"
    chmod 0700 "$DIR"
    DIR=$(cd "$DIR" && pwd)
    echo "$commune" >"$DIR/commune"
    : >"$DIR/index.txt"
    echo 1000 >"$DIR/serial"
    echo 1000 >"$DIR/crlnumber"
    write_cnf
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/ca.key"
    openssl req -new -x509 -key "$DIR/ca.key" -days "$days" -sha256 \
      -subj "/O=$commune/CN=$commune commune CA" \
      -addext "basicConstraints=critical,CA:true,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$DIR/ca.crt"
    chmod 0644 "$DIR/ca.crt"
    gen_crl
    echo "$DIR/ca.crt"
    ;;
  node|account)
    DIR=$(cd "$DIR" && pwd)
    issue "${1:?usage: ca.sh DIR $CMD NAME [DAYS]}" client_ext "${2:-1825}"
    ;;
  broker)
    DIR=$(cd "$DIR" && pwd)
    host=${1:?usage: ca.sh DIR broker HOST [HOST|IP...]}
    san=""
    for n in "$@"; do
      if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="${san:+,}IP:$n"; else san+="${san:+,}DNS:$n"; fi
    done
    issue "$host" server_ext "${BROKER_DAYS:-1825}" "$san"
    ;;
  revoke)
    DIR=$(cd "$DIR" && pwd)
    name=${1:?usage: ca.sh DIR revoke NAME}
    check_name "$name"; need_ca
    [ -f "$DIR/issued/$name.crt" ] || die "no certificate issued to $name"
    openssl ca -config "$DIR/openssl.cnf" -revoke "$DIR/issued/$name.crt" 2>/dev/null
    mkdir -p "$DIR/revoked"
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    mv "$DIR/issued/$name.crt" "$DIR/revoked/$name.$stamp.crt"
    mv "$DIR/issued/$name.key" "$DIR/revoked/$name.$stamp.key"
    gen_crl
    echo "$DIR/crl.pem"
    ;;
  crl)
    DIR=$(cd "$DIR" && pwd); need_ca; gen_crl; echo "$DIR/crl.pem"
    ;;
  *) die "unknown command '$CMD'" ;;
esac
