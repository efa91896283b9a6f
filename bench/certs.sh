# Sourced by the bench scripts. bench_certs DIR makes a throw-away CA and a P-256 leaf for
# localhost and 127.0.0.1 (the IP for servers reached by address, such as slapd from Parley)
# in DIR, unless DIR/cert.pem exists: DIR/ca.crt is the clients' trust anchor, DIR/cert.pem the
# leaf followed by the CA, DIR/key.pem its key.
bench_certs() {
    local dir=$1
    [[ -f $dir/cert.pem ]] && return 0
    mkdir -p "$dir" || return 1
    (
        cd "$dir" || exit 1
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=Parley bench CA" -keyout ca.key -out ca.crt 2>/dev/null &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
            -keyout key.pem -out leaf.csr 2>/dev/null &&
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > ext.cnf &&
        openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -extfile ext.cnf -out leaf.crt 2>/dev/null &&
        cat leaf.crt ca.crt > cert.pem
    )
}
