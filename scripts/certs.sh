# shellcheck shell=bash
# Throwaway certificates for the TLS tests. Source this file, then:
#
#   make_test_certs DIR   # DIR/ca.pem: a certificate authority made for this run;
#                         # DIR/server.pem + DIR/server-key.pem: signed by it, valid for
#                         #   localhost and 127.0.0.1 (what verify-full checks);
#                         # DIR/other-ca.pem: an unrelated authority, for "wrong CA" tests.
#
# Keys are made fresh each run and never leave target/. Only the openssl command is needed
# (Debian's openssl package, on every machine here).

_certs_log() { echo "certs.sh: $*" >&2; }

make_test_certs() {
    local dir="$1"
    if ! command -v openssl >/dev/null 2>&1; then
        _certs_log "openssl is missing; install Debian's openssl package"
        return 1
    fi
    mkdir -p "$dir" || return 1
    (
        set -e
        cd "$dir"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=usersync test CA" \
            -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=another test CA" \
            -keyout other-ca-key.pem -out other-ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server-key.pem -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 2 -extfile server.ext -out server.pem 2>/dev/null
        rm -f server.csr server.ext ca.srl other-ca-key.pem
        # The certificates are public; the keys stay readable by their owner only.
        chmod 644 ca.pem other-ca.pem server.pem
    ) || { _certs_log "making certificates in $dir failed"; return 1; }
}
