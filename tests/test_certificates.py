"""The market PKI without sockets: issuing, reading and refusing certificates and CRLs.

Every refusal names its class and its stable code. Certificates that our issuer would
never produce (no SAN, two CNs, a CA flag...) are built here with cryptography's
``CertificateBuilder`` and signed by the real market root, so the only thing wrong
with them is the one field under test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import pkgutil
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from pki import NOW, Market

from semper.services import Amount, ServiceError
from semper.services.certificates import (
    ARC,
    ROLE_POLICY,
    BadCertificate,
    BadCrl,
    BadKeyUsage,
    CertificateError,
    CrlStale,
    Expired,
    InsufficientLevel,
    Level,
    NotYetValid,
    Revoked,
    Untrusted,
    WrongPeer,
    WrongRole,
    check_name,
    create_ca,
    fingerprint,
    identity_of,
    issue_agent_certificate,
    issue_crl,
    level_oid,
    load_certificate,
    load_crl,
    validate_certificate,
    validate_crl,
)
from semper.transport import transport_error_classes

DAY = dt.timedelta(days=1)
SERVER_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def validate(market: Market, cert: x509.Certificate, **kw):
    kw.setdefault("crl", market.crl)
    kw.setdefault("now", NOW)
    return validate_certificate(cert, root=market.ca.certificate, **kw)


def refused(exc_class: type[CertificateError], code: str, fn: Callable[[], object]) -> str:
    """Run ``fn``, expect exactly ``exc_class`` with ``code``; return the message."""
    with pytest.raises(CertificateError) as info:
        fn()
    assert type(info.value) is exc_class
    assert info.value.code == code
    return info.value.message


# -- hand-built certificates ---------------------------------------------------------


def uri(agent_id: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(f"semper:agent/{agent_id}")


def role_policy(*roles: str) -> x509.PolicyInformation:
    return x509.PolicyInformation(ROLE_POLICY, [f"semper:role/{r}" for r in roles])


def level_policy(level: Level, *qualifiers: str) -> x509.PolicyInformation:
    return x509.PolicyInformation(level_oid(level), list(qualifiers) or None)


def forge(
    market: Market,
    *,
    names: Sequence[str] = ("seller",),
    sans: Sequence[x509.GeneralName] | None = (uri("seller"),),
    policies: Sequence[x509.PolicyInformation] | None = (
        role_policy("seller"),
        level_policy(Level.SELF_ASSERTED),
    ),
    ca: bool = False,
    digital_signature: bool = True,
    eku: Sequence[x509.ObjectIdentifier] | None = SERVER_CLIENT,
    key: object | None = None,
    extra: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """An agent certificate like ``issue_agent_certificate`` makes, with one field changed."""
    key = key or ed25519.Ed25519PrivateKey.generate()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in names]))
        .issuer_name(market.ca.certificate.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if policies is not None:
        builder = builder.add_extension(x509.CertificatePolicies(list(policies)), critical=False)
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(market.ca.key, None)


def with_duplicate_san(market: Market) -> x509.Certificate:
    """Two SubjectAlternativeName extensions, which CertificateBuilder refuses to make.

    Build the second one under a placeholder OID of the same encoded length, swap the
    OID in the to-be-signed bytes and sign those again with the root key.
    """
    placeholder = x509.ObjectIdentifier("2.5.29.99")  # encodes as 06 03 55 1d 63
    cert = forge(market, extra=[x509.UnrecognizedExtension(
        placeholder, x509.SubjectAlternativeName([uri("bank")]).public_bytes())])
    tbs = cert.tbs_certificate_bytes
    swapped = tbs.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x11")
    assert swapped != tbs and len(swapped) == len(tbs)
    der = cert.public_bytes(serialization.Encoding.DER).replace(tbs, swapped)
    key = market.ca.key
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return x509.load_der_x509_certificate(der[:-64] + key.sign(swapped))  # Ed25519: 64 bytes


# -- accepting -----------------------------------------------------------------------


def test_a_good_certificate_proves_its_identity(market: Market) -> None:
    agent = market.agent("seller.books", "seller", level=Level.VERIFIED_IDENTITY)
    identity = validate(market, agent.cert, expected_id="seller.books", expected_role="seller",
                        min_level=Level.VERIFIED_IDENTITY)
    assert identity.agent_id == "seller.books"
    assert identity.role == "seller"
    assert identity.level is Level.VERIFIED_IDENTITY
    assert identity.liability is None
    assert identity.serial == agent.cert.serial_number
    der = agent.cert.public_bytes(serialization.Encoding.DER)
    assert identity.fingerprint == hashlib.sha256(der).digest() == fingerprint(agent.cert)
    assert identity.not_after == agent.cert.not_valid_after_utc
    assert identity.certificate is agent.cert
    assert identity_of(agent.cert) == identity


def test_a_liable_certificate_carries_its_amount(market: Market) -> None:
    cap = Amount("EUR", 5_000_000)
    agent = market.agent("bank", "bank", level=Level.LIABLE, liability=cap)
    identity = validate(market, agent.cert)
    assert identity.level is Level.LIABLE
    assert identity.liability == cap


@pytest.mark.parametrize("level", list(Level))
def test_every_level_round_trips(market: Market, level: Level) -> None:
    liability = Amount("CHF", 100) if level is Level.LIABLE else None
    agent = market.agent(f"agent-{int(level)}", level=level, liability=liability)
    identity = validate(market, agent.cert)
    assert identity.level is level
    assert identity.liability == liability
    assert Level.from_label(level.label) is level


def test_level_labels() -> None:
    assert [lv.label for lv in Level] == [
        "self-asserted", "verified-contact", "verified-identity", "liable"]
    assert list(Level) == sorted(Level)
    with pytest.raises(ValueError, match="unknown liability level"):
        Level.from_label("trusted")


def test_the_oid_arc_never_changes() -> None:
    # Certificates already issued carry these numbers.
    assert ARC == "2.25.104565710749821735697368142929788003662"
    assert ROLE_POLICY.dotted_string == f"{ARC}.1"
    assert level_oid(Level.LIABLE).dotted_string == f"{ARC}.2.4"


def test_validity_bounds_are_inclusive(market: Market) -> None:
    # (the root itself is valid from NOW - 5 minutes)
    agent = market.agent("seller", not_before=NOW - dt.timedelta(minutes=2), not_after=NOW + DAY)
    start, end = agent.cert.not_valid_before_utc, agent.cert.not_valid_after_utc
    validate(market, agent.cert, now=start)
    validate(market, agent.cert, now=end)
    refused(NotYetValid, "auth.not_yet_valid",
            lambda: validate(market, agent.cert, now=start - dt.timedelta(seconds=1)))
    refused(Expired, "auth.expired",
            lambda: validate(market, agent.cert, now=end + dt.timedelta(seconds=1)))


@pytest.mark.parametrize("cert_level", list(Level))
@pytest.mark.parametrize("min_level", list(Level))
def test_min_level(market: Market, cert_level: Level, min_level: Level) -> None:
    liability = Amount("EUR", 1) if cert_level is Level.LIABLE else None
    agent = market.agent("seller", level=cert_level, liability=liability)
    if cert_level >= min_level:
        assert validate(market, agent.cert, min_level=min_level).level is cert_level
    else:
        refused(InsufficientLevel, "auth.insufficient_level",
                lambda: validate(market, agent.cert, min_level=min_level))


def test_now_must_be_timezone_aware(market: Market) -> None:
    agent = market.agent("seller")
    with pytest.raises(ValueError, match="timezone"):
        validate(market, agent.cert, now=NOW.replace(tzinfo=None))


# -- refusing: trust, time and revocation ---------------------------------------------


def test_foreign_ca_with_the_same_name_is_untrusted(market: Market, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = Market(tmp_path / "other")
    intruder = other.agent("seller", "seller")
    assert intruder.cert.issuer == market.ca.certificate.subject  # both roots: "test root"
    msg = refused(Untrusted, "auth.untrusted", lambda: validate(market, intruder.cert))
    assert "signature" in msg


def test_foreign_ca_with_another_name_is_untrusted(market: Market) -> None:
    other = create_ca("elsewhere", now=NOW)
    cert = issue_agent_certificate(other, agent_id="seller", role="seller", now=NOW,
                                   public_key=ed25519.Ed25519PrivateKey.generate().public_key())
    msg = refused(Untrusted, "auth.untrusted", lambda: validate(market, cert))
    assert "not issued by" in msg


def test_tampered_signature_is_untrusted(market: Market) -> None:
    der = bytearray(market.agent("seller").cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the Ed25519 signature
    tampered = x509.load_der_x509_certificate(bytes(der))
    refused(Untrusted, "auth.untrusted", lambda: validate(market, tampered))


def test_tampered_body_is_untrusted(market: Market) -> None:
    cert = market.agent("seller", "seller")
    der = cert.cert.public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_certificate(der.replace(b"semper:role/seller",
                                                          b"semper:role/sellex"))
    assert identity_of(tampered).role == "sellex"
    refused(Untrusted, "auth.untrusted", lambda: validate(market, tampered))


def test_root_outside_its_validity_is_untrusted(market: Market) -> None:
    agent = market.agent("seller", not_after=NOW + dt.timedelta(days=4000))
    crl = issue_crl(market.ca, [], now=NOW + dt.timedelta(days=3651), number=2)
    refused(Untrusted, "auth.untrusted", lambda: validate(
        market, agent.cert, crl=crl, now=NOW + dt.timedelta(days=3652)))


def test_expired(market: Market) -> None:
    agent = market.agent("old", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    refused(Expired, "auth.expired", lambda: validate(market, agent.cert))


def test_not_yet_valid(market: Market) -> None:
    agent = market.agent("early", not_before=NOW + DAY, not_after=NOW + 10 * DAY)
    refused(NotYetValid, "auth.not_yet_valid", lambda: validate(market, agent.cert))


def test_revoked(market: Market) -> None:
    agent, bystander = market.agent("seller"), market.agent("buyer")
    old_crl = market.crl
    market.revoke(agent)
    refused(Revoked, "auth.revoked", lambda: validate(market, agent.cert))
    validate(market, bystander.cert)  # only that serial is revoked
    validate(market, agent.cert, crl=old_crl)  # the CRL decides, nothing else


@pytest.mark.parametrize(
    ("make_crl", "fragment"),
    [
        # past its next update: forty days old with a thirty-day lifetime
        (lambda m, o: issue_crl(m.ca, [], now=NOW - 40 * DAY, number=9), "stale"),
        # issued tomorrow: a clock this far off is not trusted
        (lambda m, o: issue_crl(m.ca, [], now=NOW + DAY, number=9), "future"),
        # same issuer name, signed by another root's key
        (lambda m, o: issue_crl(o, [], now=NOW, number=9), "not signed"),
        # another root altogether
        (lambda m, o: issue_crl(create_ca("elsewhere", now=NOW), [], now=NOW, number=9),
         "not signed"),
    ],
    ids=["stale", "future", "same-name-other-key", "other-root"],
)
def test_bad_crl(market: Market, make_crl, fragment: str) -> None:
    agent = market.agent("seller")
    crl = make_crl(market, create_ca("test root", now=NOW))
    # a stale CRL is a BadCrl with a code of its own: fetch a fresh one, retry
    cls, code = (CrlStale, "auth.crl_stale") if fragment == "stale" else (BadCrl, "auth.bad_crl")
    msg = refused(cls, code, lambda: validate(market, agent.cert, crl=crl))
    assert fragment in msg
    with pytest.raises(BadCrl):
        validate_crl(crl, root=market.ca.certificate, now=NOW)


def test_a_forged_crl_cannot_hide_a_revocation(market: Market) -> None:
    agent = market.agent("seller")
    market.revoke(agent)
    forged = issue_crl(create_ca("test root", now=NOW), [], now=NOW, number=99)
    refused(BadCrl, "auth.bad_crl", lambda: validate(market, agent.cert, crl=forged))


# -- refusing: usage ---------------------------------------------------------------


def test_the_ca_certificate_cannot_act_as_an_agent(market: Market) -> None:
    refused(BadKeyUsage, "auth.bad_key_usage", lambda: validate(market, market.ca.certificate))


@pytest.mark.parametrize(
    "changes",
    [
        {"ca": True},  # a CA certificate issued by the root
        {"digital_signature": False},  # cannot sign a TLS handshake
        {"eku": (ExtendedKeyUsageOID.SERVER_AUTH,)},  # could listen but not dial
        {"eku": (ExtendedKeyUsageOID.CLIENT_AUTH,)},  # could dial but not listen
        {"eku": None},  # no extended key usage at all
        {"key": ec.generate_private_key(ec.SECP256R1())},  # agent keys are Ed25519
    ],
    ids=["ca", "no-digital-signature", "server-only", "client-only", "no-eku", "ec-key"],
)
def test_bad_key_usage(market: Market, changes: dict) -> None:
    validate(market, forge(market))  # the baseline is fine
    refused(BadKeyUsage, "auth.bad_key_usage", lambda: validate(market, forge(market, **changes)))


# -- refusing: identity ------------------------------------------------------------


LIABLE = Level.LIABLE


@pytest.mark.parametrize(
    "changes",
    [
        {"sans": None},  # no SAN
        {"sans": [uri("seller"), uri("seller2")]},  # two agent URIs
        {"sans": [uri("seller"), uri("seller")]},  # the same URI twice
        {"sans": [uri("bank")]},  # SAN names another agent than the CN
        {"sans": [x509.DNSName("seller")]},  # a DNS name is not our URI
        {"sans": [x509.UniformResourceIdentifier("semper:agent/Seller")]},  # case matters
        {"names": ()},  # no CN
        {"names": ("seller", "seller")},  # two CNs
        {"names": ("bank",)},  # CN names another agent than the SAN
        {"policies": None},  # no policies at all
        {"policies": [level_policy(Level.SELF_ASSERTED)]},  # no role
        {"policies": [role_policy("seller")]},  # no level
        {"policies": [role_policy("seller", "bank"), level_policy(Level.SELF_ASSERTED)]},
        {"policies": [role_policy("seller"), level_policy(Level.SELF_ASSERTED),
                      level_policy(Level.VERIFIED_CONTACT)]},  # two levels
        {"policies": [role_policy("seller"), level_policy(LIABLE)]},  # liable, no amount
        {"policies": [role_policy("seller"),
                      level_policy(LIABLE, "semper:liable/EUR/1", "semper:liable/EUR/2")]},
        {"policies": [role_policy("seller"), level_policy(LIABLE, "semper:liable/eur/1")]},
        {"policies": [role_policy("seller"), level_policy(LIABLE, "semper:liable/EUR/-1")]},
        {"policies": [role_policy("seller"), level_policy(LIABLE, "semper:liable/EUR/1.5")]},
        {"policies": [role_policy("seller"), level_policy(LIABLE, "semper:liable/EUR/+1")]},
        {"extra": [x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
                                              b"\x30\x03garbage")]},  # malformed SAN bytes
    ],
    ids=["no-san", "two-uris", "same-uri-twice", "san-other-agent", "dns-san", "uri-case",
         "no-cn", "two-cns", "cn-other-agent", "no-policies", "no-role", "no-level",
         "two-roles", "two-levels", "liable-no-amount", "liable-two-amounts",
         "liable-bad-currency", "liable-negative", "liable-decimal", "liable-plus",
         "malformed-san"],
)
def test_bad_certificate(market: Market, changes: dict) -> None:
    if "extra" in changes:
        changes = {**changes, "sans": None}
    cert = forge(market, **changes)
    refused(BadCertificate, "auth.bad_certificate", lambda: validate(market, cert))
    with pytest.raises(BadCertificate):
        identity_of(cert)


def test_duplicate_san_extension_is_a_bad_certificate(market: Market) -> None:
    cert = with_duplicate_san(market)
    cert.verify_directly_issued_by(market.ca.certificate)  # a genuine root signature
    refused(BadCertificate, "auth.bad_certificate", lambda: validate(market, cert))


def test_wrong_peer(market: Market) -> None:
    agent = market.agent("seller", "seller")
    msg = refused(WrongPeer, "auth.wrong_peer",
                  lambda: validate(market, agent.cert, expected_id="bank"))
    assert "'bank'" in msg and "'seller'" in msg


def test_wrong_role(market: Market) -> None:
    agent = market.agent("seller", "seller")
    refused(WrongRole, "auth.wrong_role",
            lambda: validate(market, agent.cert, expected_id="seller", expected_role="bank"))


# -- issuing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "liability"),
    [
        (Level.LIABLE, None),  # liable needs an amount
        (Level.LIABLE, Amount("EUR", 0)),  # a positive one
        (Level.LIABLE, Amount("EUR", -100)),
        (Level.SELF_ASSERTED, Amount("EUR", 100)),  # an amount only at level liable
        (Level.VERIFIED_CONTACT, Amount("EUR", 100)),
        (Level.VERIFIED_IDENTITY, Amount("EUR", 100)),
    ],
)
def test_liability_must_fit_the_level(market: Market, level: Level, liability) -> None:
    with pytest.raises(ValueError, match="liab"):
        market.agent("bank", "bank", level=level, liability=liability)


@pytest.mark.parametrize("name", ["seller", "seller.books", "a", "0day", "x_y-z.1", "a" * 63])
def test_check_name_accepts(name: str) -> None:
    assert check_name("agent id", name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Seller",  # lower case only
        "-seller",  # starts with a letter or digit
        ".seller",
        "a" * 64,  # at most 63 characters
        "sel ler",
        "sel/ler",  # safe in URIs and file names
        "seller\n",  # no trailing newline
        "séller",  # ASCII only
        "semper:agent/x",
        123,  # not a string
        None,
    ],
)
def test_check_name_refuses(name: object) -> None:
    with pytest.raises(ValueError):
        check_name("agent id", name)  # type: ignore[arg-type]


def test_issuing_refuses_bad_names_and_keys(market: Market) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ValueError, match="agent id"):
        issue_agent_certificate(market.ca, agent_id="Bad", role="buyer", public_key=key, now=NOW)
    with pytest.raises(ValueError, match="role"):
        issue_agent_certificate(market.ca, agent_id="ok", role="Bad", public_key=key, now=NOW)
    with pytest.raises(TypeError):
        issue_agent_certificate(market.ca, agent_id="ok", role="buyer", now=NOW,
                                public_key=ec.generate_private_key(ec.SECP256R1()).public_key())


def test_issued_certificates_have_the_right_extensions(market: Market) -> None:
    cert = market.agent("seller", "seller").cert
    ext = cert.extensions
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == set(SERVER_CLIENT)
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["semper:agent/seller"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "seller"
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = market.ca.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    cert.verify_directly_issued_by(market.ca.certificate)


def test_the_root_signs_certificates_and_crls_only(market: Market) -> None:
    root = market.ca.certificate
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True and basic.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)


def test_crl_numbers_grow(market: Market) -> None:
    def number() -> int:
        return market.crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    a, b = market.agent("a"), market.agent("b")
    seen = [number()]
    market.revoke(a)
    seen.append(number())
    market.revoke(b)
    seen.append(number())
    assert seen == sorted(set(seen))
    assert {r.serial_number for r in market.crl} == {a.cert.serial_number, b.cert.serial_number}
    validate_crl(market.crl, root=market.ca.certificate, now=NOW)


def test_load_pem_and_der(market: Market) -> None:
    cert = market.agent("seller").cert
    for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
        assert load_certificate(cert.public_bytes(encoding)) == cert
        assert load_crl(market.crl.public_bytes(encoding)) == market.crl
    with pytest.raises(BadCertificate):
        load_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(BadCertificate):
        load_certificate(b"\x30\x03abc")
    with pytest.raises(BadCrl):
        load_crl(cert.public_bytes(serialization.Encoding.DER))  # a certificate, not a CRL


# -- error codes -------------------------------------------------------------------


def _service_error_classes() -> list[type[ServiceError]]:
    import semper.services

    for module in pkgutil.walk_packages(semper.services.__path__, "semper.services."):
        importlib.import_module(module.name)
    seen: list[type[ServiceError]] = []
    stack: list[type[ServiceError]] = [ServiceError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


def test_every_service_error_has_its_own_distinct_code() -> None:
    classes = _service_error_classes()
    assert {Untrusted, Revoked, BadCrl, WrongPeer, InsufficientLevel} <= set(classes)
    for cls in classes:
        assert "code" in vars(cls), f"{cls.__qualname__} inherits its code"
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", cls.code), cls.code
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)


def test_service_and_transport_codes_do_not_collide() -> None:
    services = {cls.code for cls in _service_error_classes()}
    transport = {cls.code for cls in transport_error_classes()}
    assert not services & transport


def test_every_certificate_refusal_is_a_certificate_error() -> None:
    for cls in (BadCertificate, BadCrl, BadKeyUsage, Expired, InsufficientLevel, NotYetValid,
                Revoked, Untrusted, WrongPeer, WrongRole):
        assert issubclass(cls, CertificateError)
        assert cls.code.startswith("auth.")
