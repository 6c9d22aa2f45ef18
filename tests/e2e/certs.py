"""
Test certificates for cutover's end-to-end tests, made with the openssl
command line (the standard library only, no Python crypto modules).

    ca = make_ca(tmp_path)                                     # (crt, key)
    crt, key = make_leaf(tmp_path, ca, ["a.test", "*.wild.test", "127.0.0.1"])
    crt, key = make_self_signed(tmp_path, ["untrusted.test"])
    inter = make_ca(tmp_path, name="inter", parent=ca)         # an intermediate
    crt, key = make_leaf(tmp_path, inter, ["chain.test"], name="chain")
    full = write_chain(tmp_path / "chain-full.crt", crt, inter[0])  # leaf first

Keys are EC P-256 (about 10 ms a certificate), unencrypted PEM, mode 0600;
certificates are valid from now for `days` days. Names that parse as IP
addresses become IP subjectAltNames, the others DNS ones ("*.x" wildcards
included). Everything is written to the directory given, which should be a
temporary one (pytest's tmp_path): key files never belong in the tree.

By hand, for curl or a browser:
    python3 tests/e2e/certs.py /tmp/certs a.test '*.wild.test'
"""
import ipaddress
import os
import subprocess
import sys

# A config of our own, so the system openssl.cnf cannot add extensions or
# change defaults under the tests.
_MIN_CNF = "[req]\ndistinguished_name = dn\n[dn]\n"

# The subject CN is at most 64 characters (RFC 5280 ub-common-name).
_CN_MAX = 64


def _is_ip(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _config(directory):
    path = os.path.join(directory, "openssl-min.cnf")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(_MIN_CNF)
    return path


def _openssl(args):
    res = subprocess.run(["openssl"] + args, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("openssl %s failed (exit %d): %s" % (" ".join(args), res.returncode, res.stderr.strip()))


def _issue(directory, name, cn, extensions, signer, days):
    """One key and certificate, <name>.crt/.key in directory, signed by signer
    ((crt, key)) or self-signed when signer is None."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    crt = os.path.join(directory, name + ".crt")
    key = os.path.join(directory, name + ".key")
    args = ["req", "-config", _config(directory), "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", str(days), "-keyout", key, "-out", crt, "-subj", "/CN=" + cn]
    for ext in extensions:
        args += ["-addext", ext]
    if signer is not None:
        args += ["-CA", os.fspath(signer[0]), "-CAkey", os.fspath(signer[1])]
    _openssl(args)
    os.chmod(key, 0o600)
    return crt, key


def _leaf_extensions(names):
    exts = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=serverAuth"]
    if names:
        exts.append("subjectAltName=" + ",".join(("IP:" if _is_ip(n) else "DNS:") + n for n in names))
    return exts


def _default_cn(names, fallback):
    for n in names:
        if len(n) <= _CN_MAX and "/" not in n:
            return n
    return fallback


def make_ca(directory, name="ca", cn="cutover test CA", parent=None, days=2):
    """A CA certificate and key: a root, or an intermediate signed by parent
    ((crt, key) of another make_ca). Returns (crt_path, key_path)."""
    exts = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"]
    return _issue(directory, name, cn, exts, parent, days)


def make_leaf(directory, ca, names, name="leaf", cn=None, days=2):
    """A server certificate signed by ca ((crt, key) from make_ca) for names
    (DNS names, "*.x" wildcards, IP addresses), all in subjectAltName. With
    names empty the certificate has no subjectAltName at all and only cn
    names it (to test the CN fallback). cn defaults to the first name.
    Returns (crt_path, key_path)."""
    names = list(names)
    if cn is None:
        cn = _default_cn(names, "cutover test leaf")
    return _issue(directory, name, cn, _leaf_extensions(names), ca, days)


def make_self_signed(directory, names, name="self", cn=None, days=2):
    """A self-signed server certificate for names, trusted by nobody.
    Returns (crt_path, key_path)."""
    names = list(names)
    if cn is None:
        cn = _default_cn(names, "cutover test self-signed")
    return _issue(directory, name, cn, _leaf_extensions(names), None, days)


def write_chain(path, *crts):
    """Concatenate certificates (leaf first, then intermediates) into path,
    the "fullchain" form a listener's cert file takes. Returns path as str."""
    path = os.fspath(path)
    with open(path, "w") as out:
        for crt in crts:
            with open(crt) as f:
                out.write(f.read())
    return path


def main(argv):
    if len(argv) < 3:
        sys.stderr.write("usage: certs.py DIR NAME... (makes ca.crt/ca.key and leaf.crt/leaf.key in DIR)\n")
        return 2
    ca = make_ca(argv[1])
    crt, key = make_leaf(argv[1], ca, argv[2:])
    print("ca:   %s\ncert: %s\nkey:  %s" % (ca[0], crt, key))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
