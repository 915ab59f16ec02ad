"""Azure pieces that need no service: listing XML, dates, SAS and connection strings."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from datasources.connectors.azure_blob import SasInfo, parse_connection_string
from datasources.connectors.azure_blob.http import error_code as _error_code
from datasources.connectors.azure_blob.listing import _http_date, _parse_listing
from datasources.errors import ConfigurationError, UnavailableError

LISTING = b"""<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="c">
  <Prefix>d/</Prefix><MaxResults>2</MaxResults><Delimiter>/</Delimiter>
  <Blobs>
    <Blob><Name>d/a.csv</Name><Properties>
      <Last-Modified>Thu, 26 Nov 2026 03:25:01 GMT</Last-Modified><Etag>"0x8DABC"</Etag>
      <Content-Length>42</Content-Length><Content-Type>text/csv</Content-Type>
      <Content-MD5>1B2M2Y8AsgTpgAmY7PhCfg==</Content-MD5></Properties>
      <Metadata><owner>ana</owner></Metadata></Blob>
    <Blob><Name Encoded="true">d/%EF%BF%BEodd.txt</Name>
      <Properties><Content-Length>0</Content-Length></Properties></Blob>
    <BlobPrefix><Name>d/sub/</Name></BlobPrefix>
  </Blobs>
  <NextMarker>opaque-marker</NextMarker>
</EnumerationResults>"""


def test_listing_xml() -> None:
    items, marker = _parse_listing(LISTING)
    assert marker == "opaque-marker"
    a, sub, odd = items  # path order (Azurite sends prefixes first; we sort each page)
    assert (a.path, a.name, a.size, a.content_type, a.etag) == (
        "d/a.csv",
        "a.csv",
        42,
        "text/csv",
        "0x8DABC",
    )
    assert a.checksum == "md5:1B2M2Y8AsgTpgAmY7PhCfg==" and a.metadata == {"owner": "ana"}
    assert a.last_modified == datetime(2026, 11, 26, 3, 25, 1, tzinfo=UTC)
    assert odd.path == "d/\ufffeodd.txt" and odd.size == 0
    assert (sub.path, sub.kind) == ("d/sub/", "directory")
    assert _parse_listing(b"<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>") == (
        [],
        None,
    )


def test_hostile_listing_xml_fails_fast() -> None:
    laughs = b"""<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">
    <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
    <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;"><!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
    <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;"><!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
    <!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;"><!ENTITY i "&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;">
    ]><EnumerationResults><Blobs><Blob><Name>&i;</Name></Blob></Blobs></EnumerationResults>"""
    start = time.perf_counter()
    with pytest.raises(UnavailableError):
        _parse_listing(laughs)
    assert time.perf_counter() - start < 5
    external = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>
    <EnumerationResults><Blobs><Blob><Name>&e;</Name></Blob></Blobs></EnumerationResults>"""
    with pytest.raises(UnavailableError):
        _parse_listing(external)
    with pytest.raises(UnavailableError):
        _parse_listing(b"not xml at all")
    assert _error_code(b"<Error><Code>ContainerNotFound</Code></Error>") == "ContainerNotFound"
    assert _error_code(b"garbage") is None


def test_http_dates() -> None:
    assert _http_date("Thu, 26 Nov 2026 03:25:01 GMT") == datetime(
        2026, 11, 26, 3, 25, 1, tzinfo=UTC
    )
    assert _http_date(None) is None and _http_date("nonsense") is None


def test_sas_introspection() -> None:
    info = SasInfo.parse("sv=2023-11-03&se=2030-01-01T00%3A00%3A00Z&sr=c&sp=rl&sig=abc")
    assert info.expiry == datetime(2030, 1, 1, tzinfo=UTC)
    assert info.container_scoped and not info.can_write and info.permissions == "rl"
    assert SasInfo.parse("?ss=b&srt=sco&sp=rwdl&se=2030-01-01&sig=x").can_write
    with pytest.raises(ConfigurationError):
        SasInfo.parse("sv=2023&se=2030-01-01")  # no signature
    with pytest.raises(ConfigurationError):
        SasInfo.parse("se=not-a-date&sig=x")


def test_connection_string_variants() -> None:
    dev = parse_connection_string("UseDevelopmentStorage=true")
    assert dev.account_url == "http://127.0.0.1:10000/devstoreaccount1" and dev.account_key
    cloud = parse_connection_string(
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn"
    )
    assert cloud.account_url == "https://acct.blob.core.chinacloudapi.cn"
    assert "a2V5" not in repr(cloud)
    sas = parse_connection_string(
        "BlobEndpoint=https://x.blob.core.windows.net/;SharedAccessSignature=?sv=1&sig=s"
    )
    assert sas.sas_token == "sv=1&sig=s" and sas.account_url == "https://x.blob.core.windows.net"
