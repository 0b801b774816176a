#!/usr/bin/env python3
"""Validates webhook bodies esim-mdm sent against NanoMDM's event schema.

    validate_webhooks.py SCHEMA BODIES

BODIES holds one JSON body per line, as a receiver got them. Each must
validate against SCHEMA (tests/data/nanomdm-webhook.schema.json, JSON Schema
2020-12), and beyond what a schema says: raw_payload is base64 of a plist
whose MessageType (or Status) agrees with the topic (for a Windows PC's
result: the SyncML Status and Results elements in a SyncBody, naming the
command, with a status that agrees with their codes), token_update_tally
comes with mdm.TokenUpdate only, and an Idle result has no command_uuid
(absent, not empty). Prints each problem; exits 1 if there was one.
"""
import base64
import json
import plistlib
import re
import sys

import jsonschema


def check(event, validator):
    problems = [e.message for e in validator.iter_errors(event)]
    if problems:
        return problems
    topic = event["topic"]
    body = event.get("checkin_event") or event.get("acknowledge_event")
    try:
        data = base64.b64decode(body["raw_payload"], validate=True)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return [f"raw_payload is not base64: {exc}"]
    if data.startswith(b"<SyncBody>"):
        return check_windows(topic, body, data.decode("utf-8", "replace"))
    try:
        raw = plistlib.loads(data)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return [f"raw_payload is not base64 of a plist: {exc}"]
    if topic == "mdm.Connect":
        if raw.get("Status") != body["status"]:
            problems.append("status does not match the raw payload's Status")
        if body["status"] == "Idle" and "command_uuid" in body:
            problems.append("an Idle event carries command_uuid")
        if body["status"] != "Idle" and body.get("command_uuid") != raw.get("CommandUUID"):
            problems.append("command_uuid does not match the raw payload's CommandUUID")
    elif "mdm." + raw.get("MessageType", "") != topic:
        problems.append(f"topic {topic} but MessageType {raw.get('MessageType')}")
    if ("token_update_tally" in body) != (topic == "mdm.TokenUpdate"):
        problems.append("token_update_tally must come with mdm.TokenUpdate, and only with it")
    ident = body.get("udid", body.get("enrollment_id"))
    if "ids" in body and body["ids"]["id"] != ident:
        problems.append("ids.id is not the device's udid / enrollment_id")
    return problems


def check_windows(topic, body, text):
    """A Windows PC's result: the Status and Results elements it sent for
    the command, in a SyncBody. Each names the command (CmdRef UUID or
    UUID.N); the status is Acknowledged when every Status code is 2xx."""
    problems = []
    if topic != "mdm.Connect" or "status" not in body:
        return ["a SyncML raw_payload on another event than a result"]
    uuid = body.get("command_uuid", "")
    refs = re.findall(r"<CmdRef>([^<]*)</CmdRef>", text)
    codes = [int(c) for c in re.findall(r"<Status\b.*?<Data\b[^>]*>([0-9]{3})</Data>", text, re.S)]
    if not refs or not codes:
        problems.append("no Status element in the SyncML raw_payload")
    for ref in refs:
        if ref != uuid and not ref.startswith(uuid + "."):
            problems.append(f"CmdRef {ref} is not command {uuid}")
    ok = all(200 <= c <= 299 for c in codes)
    if body["status"] != ("Acknowledged" if ok else "Error"):
        problems.append(f"status {body['status']} but the item codes are {codes}")
    return problems


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    failed = 0
    count = 0
    with open(sys.argv[2], encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            count += 1
            event = json.loads(line)
            for p in check(event, validator):
                failed += 1
                print(f"body {n} ({event.get('topic')}): {p}", file=sys.stderr)
    print(f"{count} webhook bodies checked, {failed} problems")
    return 1 if failed or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
