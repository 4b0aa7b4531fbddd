from rendezvous.observe.logging import scrub, scrub_processor


def test_ipv4_and_ipv6_are_scrubbed_but_not_versions_or_ids():
    assert scrub("from 192.0.2.7:5000 ok") == "from [scrubbed]:5000 ok"
    assert scrub("peer [2001:db8::1]:443") == "peer [scrubbed]:443"
    assert scrub("addr ::1 and fe80::1") == "addr [scrubbed] and [scrubbed]"
    assert scrub("version 1.2.3 time 12:30:45 id 334d3ecc3fcf3231") == "version 1.2.3 time 12:30:45 id 334d3ecc3fcf3231"


def test_processor_scrubs_values_but_keeps_server_url():
    out = scrub_processor(None, "info", {"event": "x", "client": "198.51.100.3", "url": "http://127.0.0.1:5000"})
    assert out == {"event": "x", "client": "[scrubbed]", "url": "http://127.0.0.1:5000"}
