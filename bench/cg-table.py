#!/usr/bin/env python3
"""Per-call inclusive instruction counts from callgrind profiles
(`spacelock-bench profile`). Usage: cg-table.py DIR N [case...]"""
import re, subprocess, sys

FUNCS = [
    "PROGRAM TOTALS", "readQueryFromClient", "parseMultibulkBuffer", "processCommand", "call",
    "ValkeyModuleCommandDispatcher", "RedisModuleCommandDispatcher",
    "setCommand", "delifeqCommand", "pexpireCommand", "getCommand", "pingCommand", "evalShaCommand",
    "VM_OpenKey", "RM_OpenKey", "VM_StringDMA", "RM_StringDMA", "dbUnshareStringValue",
    "VM_Replicate", "RM_Replicate", "lookupCommandBySdsLogic", "moduleCreateArgvFromUserFormat",
    "VM_SetAbsExpire", "RM_SetAbsExpire", "VM_StringSet", "RM_StringSet", "VM_DeleteKey", "RM_DeleteKey",
    "VM_NotifyKeyspaceEvent", "RM_NotifyKeyspaceEvent", "VM_SignalModifiedKey", "RM_SignalModifiedKey",
    "VM_ReplyWithLongLong", "RM_ReplyWithLongLong", "VM_CloseKey", "RM_CloseKey",
    "VM_StringPtrLen", "RM_StringPtrLen", "VM_CreateString", "RM_CreateString",
    "VM_FreeString", "RM_FreeString", "VM_Milliseconds", "RM_Milliseconds", "RedisModuleCommandDispatcher", "propagateNow", "alsoPropagate", "propagatePendingCommands", "notifyKeyspaceEvent", "signalModifiedKey", "lookupCommandByCString", "createStringObjectFromLongLong", "setExpire", "dbAdd", "setKey", "luaCallFunction", "evalGenericCommand",
    "replaceClientCommandVector", "lookupKey", "dbGenericDeleteWithDictIndex", "dbGenericDelete",
    "resetClient", "freeClientArgv",
]

def load(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    d = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        name = re.sub(r"\s*\[.*\]\s*$", "", m.group(2)).strip()
        name = name.split(":", 1)[1] if name.startswith("???:") or name.startswith("/") else name
        if name.startswith("/") or ".rs:" in m.group(2):
            name = m.group(2).split(":", 1)[-1].strip()
        d[name] = max(d.get(name, 0), ir)
    return d

def main():
    d, n, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    data = {c: load(f"{d}/callgrind.{c}") for c in cases}
    rust = sorted({k for v in data.values() for k in v if k.startswith("spacelock::") or k.startswith("<spacelock")})
    print("| function (inclusive instr/call) | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for f in FUNCS + rust:
        vals = [data[c].get(f) for c in cases]
        if all(v is None or v / n < 20 for v in vals):
            continue
        print(f"| {f} | " + " | ".join("" if v is None else f"{v / n:.0f}" for v in vals) + " |")

main()
