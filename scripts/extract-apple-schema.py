#!/usr/bin/python3
"""extract-apple-schema.py — turns Apple's device-management schema (YAML)
into the compact table tests/schema reads: for every command, check-in
message and profile payload esim-mdm emits, each key with its type and
presence, so the project's tests need nothing beside the project.

Re-run it when Apple publishes a new release:
    scripts/extract-apple-schema.py --schema /path/to/apple/device-management
Default schema: ../shared/reference/apple-device-management beside the
project. Default output: tests/data/apple-schema.tsv. The output depends only
on the schema files' contents (no dates, no absolute paths), so re-running on
the same files reproduces it byte for byte; tests/schema checks that.

Output: UTF-8 text, '#' lines are comments, other lines are tab-separated:
    kind  name  keypath  type  presence  values  ios_introduced  ios_supervised
kind      command | checkin | profile | payload
name      the RequestType / MessageType / PayloadType ("TopLevel" = the
          profile itself, "CommonPayloadKeys" = keys every payload has)
keypath   keys joined by '/'; an array's elements are "<array>[]"; "ANY"
          stands for any key name, as in Apple's files
type      string boolean integer real data date array dictionary any
presence  required | optional | - (array elements)
values    the allowed values joined by '|' (rangelist; for a string whose
          schema lists subkeys, such as DeviceInformation's query names,
          those names), or -
ios_introduced / ios_supervised   from supportedOS.iOS, or - when unstated
Header lines: "#source <path> <sha256>" per file read, "#absent <path>" per
wanted file missing from the schema, "#derived ..." when a missing file's
facts were taken from another of Apple's files (see derive_* below).
"""

import argparse
import hashlib
import os
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("extract-apple-schema: PyYAML is missing; install python3-yaml "
             "(scripts/install-deps.sh) and run it with /usr/bin/python3")

# What esim-mdm emits (plist/ builders, restrictions/, enrolment), in output order.
WANTED = [
    ("command", "mdm/commands/device.esim.yaml"),
    ("command", "mdm/commands/device.erase.yaml"),
    ("command", "mdm/commands/profile.install.yaml"),
    ("command", "mdm/commands/profile.remove.yaml"),
    ("command", "mdm/commands/profile.list.yaml"),
    ("command", "mdm/commands/information.device.yaml"),
    ("checkin", "mdm/checkin/authenticate.yaml"),
    ("checkin", "mdm/checkin/tokenupdate.yaml"),
    ("checkin", "mdm/checkin/checkout.yaml"),
    ("profile", "mdm/profiles/TopLevel.yaml"),
    ("payload", "mdm/profiles/CommonPayloadKeys.yaml"),
    ("payload", "mdm/profiles/com.apple.applicationaccess.yaml"),
    ("payload", "mdm/profiles/com.apple.mdm.yaml"),
    ("payload", "mdm/profiles/com.apple.security.scep.yaml"),
]

TYPES = {"string", "boolean", "integer", "real", "data", "date", "array",
         "dictionary", "any"}
CONTAINERS = {"array", "dictionary"}
PROFILE_LIST = "mdm/commands/profile.list.yaml"


class SchemaError(Exception):
    pass


def cell(value):
    """One table cell: YAML scalars as text, never a tab or newline."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if not text or any(c in text for c in "\t\n\r|"):
        raise SchemaError("value %r cannot be written to the table" % (value,))
    return text


def key_type(entry, where):
    raw = entry.get("type")
    if not isinstance(raw, str) or not raw.startswith("<") or not raw.endswith(">"):
        raise SchemaError("%s: type %r is not of the form <type>" % (where, raw))
    t = raw[1:-1]
    if t not in TYPES:
        raise SchemaError("%s: unknown type %r" % (where, raw))
    return t


def ios_support(entry):
    ios = (entry.get("supportedOS") or {}).get("iOS") or {}
    return cell(ios.get("introduced")), cell(ios.get("supervised"))


def walk_keys(kind, name, keys, prefix, rows, where, in_array=False):
    """Appends one row per key of |keys| (Apple's payloadkeys/subkeys list)."""
    if not isinstance(keys, list):
        raise SchemaError("%s: expected a list of keys" % where)
    for entry in keys:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise SchemaError("%s: a key entry has no 'key'" % where)
        here = "%s/%s" % (where, entry["key"])
        t = key_type(entry, here)
        # Apple names an array's element ("QueriesItem"); the table uses "[]".
        if in_array:
            path = prefix + "[]"
            presence = "-"
        else:
            path = (prefix + "/" if prefix else "") + entry["key"]
            presence = entry.get("presence", "optional")
            if presence not in ("required", "optional"):
                raise SchemaError("%s: presence %r" % (here, presence))
        subkeys = entry.get("subkeys")
        values = entry.get("rangelist")
        if subkeys and t not in CONTAINERS:
            # A scalar with subkeys lists its possible values (query names).
            values = [k.get("key") for k in subkeys if isinstance(k, dict)]
        values_cell = "|".join(cell(v) for v in values) if values else "-"
        introduced, supervised = ios_support(entry)
        rows.append((kind, name, path, t, presence, values_cell, introduced, supervised))
        if subkeys and t in CONTAINERS:
            walk_keys(kind, name, subkeys, path, rows, here, in_array=(t == "array"))


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise SchemaError("%s: not valid YAML: %s" % (path, e))
    if not isinstance(doc, dict) or not isinstance(doc.get("payload"), dict):
        raise SchemaError("%s: no 'payload' section" % path)
    return doc, hashlib.sha256(raw).hexdigest()


def schema_name(kind, doc, rel):
    field = "requesttype" if kind in ("command", "checkin") else "payloadtype"
    name = doc["payload"].get(field)
    if not isinstance(name, str) or not name:
        raise SchemaError("%s: payload.%s is missing" % (rel, field))
    return name


def profile_list_item(doc):
    """ProfileList's answer describes each installed profile: the keys of the
    profile itself and, under PayloadContent, the keys every payload has."""
    for top in doc.get("responsekeys") or []:
        if top.get("key") == "ProfileList":
            return top["subkeys"][0]
    raise SchemaError("%s: no ProfileList response keys" % PROFILE_LIST)


def derive_common_payload_keys(item):
    content = next(k for k in item["subkeys"] if k.get("key") == "PayloadContent")
    return content["subkeys"][0]["subkeys"]


def derive_top_level(item):
    """The profile's own keys as ProfileList reports them. ProfileList leaves
    out the top-level PayloadType (always Configuration); its type and
    presence are those of every PayloadType, taken from the payload keys."""
    keys = [k for k in item["subkeys"] if k.get("key") != "PayloadContent"]
    payload_type = next(k for k in derive_common_payload_keys(item)
                        if k.get("key") == "PayloadType")
    content = next(k for k in item["subkeys"] if k.get("key") == "PayloadContent")
    # Each element of PayloadContent is a payload, checked by its own type.
    content = dict(content, subkeys=[{"key": "PayloadContentItem", "type": "<dictionary>"}])
    return [payload_type] + keys + [content]


def extract(schema_dir):
    header, rows = [], []
    docs = {}
    for kind, rel in WANTED:
        path = os.path.join(schema_dir, rel)
        if not os.path.exists(path):
            header.append("#absent\t%s" % rel)
            continue
        doc, digest = load(path)
        docs[rel] = doc
        header.append("#source\t%s\t%s" % (rel, digest))
        name = schema_name(kind, doc, rel)
        walk_keys(kind, name, doc.get("payloadkeys") or [], "", rows, rel)

    derivations = [("mdm/profiles/TopLevel.yaml", "profile", "TopLevel", derive_top_level),
                   ("mdm/profiles/CommonPayloadKeys.yaml", "payload", "CommonPayloadKeys",
                    derive_common_payload_keys)]
    for rel, kind, name, derive in derivations:
        if rel in docs or PROFILE_LIST not in docs:
            continue
        header.append("#derived\t%s\t%s\tfrom %s responsekeys ProfileList[]"
                      % (kind, name, PROFILE_LIST))
        walk_keys(kind, name, derive(profile_list_item(docs[PROFILE_LIST])), "", rows,
                  PROFILE_LIST + " (derived " + name + ")")
    return header, rows


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    project = os.path.dirname(here)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schema", default=os.path.join(
        os.path.dirname(project), "shared", "reference", "apple-device-management"),
        help="Apple's device-management checkout (holds mdm/)")
    parser.add_argument("--output", default=os.path.join(project, "tests", "data",
                                                         "apple-schema.tsv"),
                        help="table to write; - for stdout")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.schema, "mdm")):
        sys.exit("extract-apple-schema: %s has no mdm/ folder; give --schema with a "
                 "checkout of https://github.com/apple/device-management" % args.schema)
    try:
        header, rows = extract(args.schema)
    except (SchemaError, OSError, KeyError, IndexError, StopIteration) as e:
        sys.exit("extract-apple-schema: %s" % e)
    if not rows:
        sys.exit("extract-apple-schema: none of the wanted files is in %s" % args.schema)
    lines = ["# Apple device-management schema facts for the keys esim-mdm emits.",
             "# Generated by scripts/extract-apple-schema.py; do not edit, re-run it.",
             "#columns\tkind\tname\tkeypath\ttype\tpresence\tvalues\tios_introduced"
             "\tios_supervised"]
    lines += header
    lines += ["\t".join(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
        return
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
