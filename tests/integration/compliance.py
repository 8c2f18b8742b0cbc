"""XEP-0479 (XMPP Compliance Suites 2023): every server requirement at the Advanced level for Core, IM,
Mobile, Web and A/V, with the code that implements it, what the running server must advertise for it,
and the tests that prove it.

docs/COMPLIANCE.md is rendered from this table; test_compliance.py checks the table against the code
(modules and tests exist, the built server advertises each feature) and the document against the table,
so neither can drift. After editing the table: `KABAR_BLESS=1 pytest tests/integration/test_compliance.py`.

`advertised` entries: `server:<var>` (disco#info of the domain), `account:<var>` (disco#info of an
account's bare JID), `muc:<var>` (disco#info of the MUC service), `stream:<namespace>` (a feature of
the authenticated stream), `prestream:<namespace>` (a feature of the first stream).
`tests`: `path::name` — a pytest function, a Rust test function, or a browser step/test title.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Requirement:
    category: str
    feature: str
    providers: str
    server: bool  # required at the Server level (always required at Advanced Server)
    modules: list[str]
    tests: list[str]
    advertised: list[str] = field(default_factory=list)


IT = "tests/integration"
RS = "crates/kabar-modules/src"

REQUIREMENTS = [
    Requirement("Core", "Core", "RFC 6120", True,
                ["crates/kabar/src/c2s.rs", "crates/kabar/src/auth.rs", "crates/kabar-core/src/server.rs",
                 "crates/kabar-xml/src/framer.rs"],
                [f"{IT}/test_login.py::test_login_succeeds_with_each_mechanism",
                 f"{IT}/test_bad_input.py::test_billion_laughs_is_restricted_xml",
                 f"{IT}/test_messages.py::test_message_to_full_jid_goes_only_to_that_resource",
                 f"{IT}/test_resources.py::test_same_resource_replaces_the_old_session_with_conflict"],
                ["prestream:urn:ietf:params:xml:ns:xmpp-tls", "stream:urn:ietf:params:xml:ns:xmpp-bind"]),
    Requirement("Core", "TLS", "RFC 7590", True, ["crates/kabar/src/tls.rs", "crates/kabar/src/c2s.rs"],
                [f"{IT}/test_login.py::test_tls_is_required_before_authentication",
                 f"{IT}/test_login.py::test_certificate_is_valid_for_the_domain_and_signed_by_the_generated_ca",
                 f"{IT}/test_login.py::test_login_succeeds_with_scram_plus_channel_binding"],
                ["prestream:urn:ietf:params:xml:ns:xmpp-tls"]),
    Requirement("Core", "Direct TLS", "XEP-0368", False, ["crates/kabar/src/c2s.rs"],
                [f"{IT}/test_bad_input.py::test_tls_client_hello_on_the_starttls_port_gets_direct_tls",
                 f"{IT}/test_bad_input.py::test_plaintext_on_the_direct_tls_port_is_dropped"]),
    Requirement("Core", "Service discovery", "XEP-0030", True, [f"{RS}/disco.rs"],
                [f"{IT}/test_service.py::test_server_disco_info_lists_identity_and_features",
                 f"{IT}/test_service.py::test_server_disco_items_answers"],
                ["server:http://jabber.org/protocol/disco#info", "server:http://jabber.org/protocol/disco#items"]),
    Requirement("Core", "Entity capabilities", "XEP-0115", False, [f"{RS}/disco.rs"],
                [f"{IT}/test_service.py::test_caps_in_stream_features_match_disco_info"],
                ["stream:http://jabber.org/protocol/caps"]),
    Requirement("Core", "External components", "XEP-0114", True, ["crates/kabar/src/component.rs"],
                [f"{IT}/test_component.py::test_component_receives_user_messages_and_replies",
                 f"{IT}/test_component.py::test_component_with_wrong_secret_is_refused"]),
    Requirement("Core", "Personal eventing (PEP)", "XEP-0163", False, [f"{RS}/pep.rs"],
                [f"{IT}/test_pep.py::test_xep0163_6_1_account_is_a_pep_service_with_publish_options",
                 f"{IT}/test_pep.py::test_xep0384_omemo_device_list_and_bundles_follow_their_access_models"],
                ["account:http://jabber.org/protocol/pubsub#publish"]),
    Requirement("Web", "Connection mechanisms", "RFC 7395 (WebSocket), XEP-0206 (BOSH)", True,
                ["crates/kabar/src/http/websocket.rs", "crates/kabar/src/http/bosh.rs"],
                ["tests/browser/webclient.test.mjs::alice logs in over WebSocket, bob over BOSH",
                 "tests/browser/webclient.test.mjs::a WebSocket session (browser) and a TCP session (direct TLS) talk to each other"]),
    Requirement("IM", "Core", "RFC 6121", True, [f"{RS}/roster.rs", f"{RS}/presence.rs", f"{RS}/offline.rs"],
                [f"{IT}/test_roster.py::test_added_item_is_pushed_to_every_interested_resource",
                 f"{IT}/test_subscriptions.py::test_subscription_request_and_approval",
                 f"{IT}/test_offline.py::test_message_to_offline_user_is_kept_across_a_restart_and_delivered_with_delay"],
                ["stream:urn:xmpp:features:rosterver"]),
    Requirement("IM", "vcard-temp", "XEP-0054", True, [f"{RS}/vcard.rs"],
                [f"{IT}/test_vcard.py::test_own_vcard_is_stored_and_others_can_fetch_it",
                 f"{IT}/test_vcard.py::test_nobody_can_set_another_users_vcard"],
                ["server:vcard-temp"]),
    Requirement("IM", "Message carbons", "XEP-0280", True, [f"{RS}/carbons.rs"],
                [f"{IT}/test_carbons.py::test_message_to_one_resource_is_copied_to_the_other_as_received",
                 f"{IT}/test_carbons.py::test_message_sent_by_one_resource_is_copied_to_the_other_as_sent"],
                ["server:urn:xmpp:carbons:2"]),
    Requirement("IM", "Group chat", "XEP-0045, XEP-0249", True,
                [f"{RS}/muc/mod.rs", f"{RS}/muc/room.rs", f"{RS}/muc/register.rs"],
                [f"{IT}/test_muc.py::test_xep0045_10_1_create_configure_join_and_groupchat_with_stanza_id",
                 f"{IT}/test_muc.py::test_xep0045_every_role_and_affiliation_change",
                 f"{IT}/test_muc.py::test_xep0045_7_2_7_members_only_and_7_2_6_password",
                 f"{IT}/test_muc.py::test_xep0045_6_5_room_disco_items_list_occupants_of_public_rooms_only",
                 f"{IT}/test_muc.py::test_xep0045_7_10_registration_reserves_the_nick_and_7_12_discovers_it",
                 "crates/kabar/tests/crates_client.rs::xep0045_room_created_joined_and_groupchat_with_crates_io_clients"],
                ["muc:http://jabber.org/protocol/muc"]),
    Requirement("IM", "HTTP file upload", "XEP-0363", True, [f"{RS}/upload.rs", "crates/kabar/src/http/upload.rs"],
                [f"{IT}/test_upload.py::test_xep0363_5_slot_put_get_round_trip_keeps_content_type_and_any_user_can_fetch",
                 f"{IT}/test_upload.py::test_xep0363_2_service_discovery_finds_the_server_with_max_file_size"],
                ["server:urn:xmpp:http:upload:0"]),
    Requirement("IM", "User avatar compatibility", "XEP-0398, XEP-0153", False, [f"{RS}/avatar.rs"],
                [f"{IT}/test_pep.py::test_xep0084_avatar_published_through_pep_appears_in_the_vcard",
                 f"{IT}/test_pep.py::test_xep0398_vcard_photo_becomes_the_pep_avatar",
                 f"{IT}/test_pep.py::test_xep0398_4_available_presence_carries_the_avatar_hash_the_server_stamped"],
                ["account:urn:xmpp:pep-vcard-conversion:0"]),
    Requirement("IM", "Blocking", "XEP-0191", False, [f"{RS}/blocking.rs"],
                [f"{IT}/test_blocking.py::test_blocked_contact_cannot_reach_the_user_until_unblocked",
                 f"{IT}/test_blocking.py::test_user_cannot_send_to_a_contact_they_blocked"],
                ["server:urn:xmpp:blocking"]),
    Requirement("IM", "Advanced group chat", "XEP-0048, XEP-0313 (rooms), XEP-0402 (#compat), XEP-0410", False,
                [f"{RS}/bookmarks.rs", f"{RS}/muc/archive.rs", f"{RS}/muc/mod.rs"],
                [f"{IT}/test_pep.py::test_xep0402_bookmarks_are_one_set_through_0048_private_storage_0048_pep_and_0402",
                 f"{IT}/test_muc.py::test_xep0425_moderator_retracts_and_xep0313_room_archive_pages",
                 f"{IT}/test_muc.py::test_xep0410_self_ping_and_destroy"],
                ["account:urn:xmpp:bookmarks:1#compat"]),
    Requirement("IM", "PubSub private storage", "XEP-0223", False, [f"{RS}/pep.rs"],
                [f"{IT}/test_pep.py::test_xep0223_publish_options_that_conflict_with_the_node_fail_with_precondition_not_met"],
                ["account:http://jabber.org/protocol/pubsub#publish-options"]),
    Requirement("IM", "Private XML storage", "XEP-0049", False, [f"{RS}/private.rs"],
                [f"{IT}/test_pep.py::test_xep0049_private_storage_keeps_data_and_refuses_reserved_namespaces"]),
    Requirement("IM", "Stream management", "XEP-0198", False, ["crates/kabar/src/session.rs"],
                [f"{IT}/test_delivery.py::test_resumed_session_gets_every_message_exactly_once_after_connection_drop",
                 f"{IT}/test_delivery.py::test_every_message_the_server_acked_survives_sigkill"],
                ["stream:urn:xmpp:sm:3"]),
    Requirement("IM", "History storage / retrieval", "XEP-0313", False, [f"{RS}/mam.rs"],
                [f"{IT}/test_archive.py::test_paging_forward_and_backward_returns_every_message_once_in_order",
                 f"{IT}/test_archive.py::test_full_text_search_finds_the_right_messages"],
                ["account:urn:xmpp:mam:2"]),
    Requirement("Mobile", "Stream management", "XEP-0198", True, ["crates/kabar/src/session.rs"],
                [f"{IT}/test_delivery.py::test_messages_left_when_the_resumption_window_passes_go_to_offline_storage"],
                ["stream:urn:xmpp:sm:3"]),
    Requirement("Mobile", "Client state indication", "XEP-0352", True, ["crates/kabar/src/session.rs"],
                [f"{IT}/test_csi.py::test_xep0352_inactive_client_gets_presence_only_when_active_again_latest_only",
                 f"{IT}/test_csi.py::test_xep0352_messages_reach_an_inactive_client_at_once_and_flush_held_presence"],
                ["stream:urn:xmpp:csi:0"]),
    Requirement("Mobile", "Push notifications", "XEP-0357", False, [f"{RS}/push.rs"],
                [f"{IT}/test_push.py::test_offline_user_gets_summary_notifications_without_the_body",
                 f"{IT}/test_push.py::test_detached_stream_management_session_triggers_a_notification"],
                ["account:urn:xmpp:push:0"]),
    Requirement("A/V", "STUN/TURN server discovery", "XEP-0215", True, [f"{RS}/extdisco.rs"],
                [f"{IT}/test_extdisco.py::test_xep0215_3_1_services_lists_every_configured_service_with_turn_credentials"],
                ["server:urn:xmpp:extdisco:2"]),
]


def render() -> str:
    out = [
        "# XEP-0479 compliance",
        "",
        "Every server requirement of the XMPP Compliance Suites 2023 (XEP-0479) for Core, IM, Mobile, Web and",
        "A/V at the Advanced Server level (S: also required at the Server level), the code that implements it,",
        "what the running server advertises for it, and the tests that prove it.",
        "",
        "Generated from `tests/integration/compliance.py`; `tests/integration/test_compliance.py` checks that",
        "every module and test named here exists, that the built server advertises every listed feature, and",
        "that this file matches the table (regenerate with",
        "`KABAR_BLESS=1 tests/.venv/bin/python -m pytest tests/integration/test_compliance.py`).",
        "",
        "| Category | Feature | Providers | S | Implemented in | Advertised | Proved by |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in REQUIREMENTS:
        modules = "<br>".join(f"`{m}`" for m in r.modules)
        adv = "<br>".join(f"`{a}`" for a in r.advertised) or "—"
        tests = "<br>".join(f"`{t}`" for t in r.tests)
        out.append(f"| {r.category} | {r.feature} | {r.providers} | {'✓' if r.server else ''} | {modules} | {adv} | {tests} |")
    out += [
        "",
        "Beyond the suite: XEP-0077 in-band registration, XEP-0157 (via host-meta, XEP-0156), XEP-0424/0425",
        "retraction and moderation, XEP-0386/0388/0484 (Bind 2, SASL2, FAST), XEP-0401/0379/0445 invitations,",
        "XEP-0084/0172 via PEP. See docs/PROTOCOL.md for every namespace.",
        "",
    ]
    return "\n".join(out)
