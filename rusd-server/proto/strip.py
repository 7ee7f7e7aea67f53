#!/usr/bin/env python3
"""Strips the etcd protos shipped with the etcd-client crate (etcd main, v3.7 annotations) down to
plain proto3 for rusd: removes grpc-gateway / openapi / versionpb annotations and the v3.7-only
RangeStream RPC. Usage: strip.py SRC_PROTO_DIR DEST_DIR"""
import re, sys, pathlib

def drop_block(text, start_re):
    out, i = [], 0
    for m in re.finditer(start_re, text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        j = text.index('{', m.end() - 1)
        depth = 0
        while True:
            c = text[j]
            if c == '{': depth += 1
            elif c == '}':
                depth -= 1
                if depth == 0: break
            j += 1
        j += 1
        while j < len(text) and text[j] in ' ;': j += 1
        i = j
    out.append(text[i:])
    return ''.join(out)

def strip(text):
    text = re.sub(r'^import "(google|protoc-gen-openapiv2|etcd/api/versionpb)/.*\n', '', text, flags=re.M)
    text = re.sub(r'^import "etcd/api/(mvccpb|authpb)/', r'import "\1/', text, flags=re.M)
    text = drop_block(text, r'option \(grpc\.gateway[^=]*=\s*\{')
    text = drop_block(text, r'option \(google\.api\.http\)\s*=\s*\{')
    text = re.sub(r'^\s*option \(versionpb\.[a-z_]+\)\s*=\s*"[^"]*";\n', '', text, flags=re.M)
    text = re.sub(r'\s*\[\(versionpb\.[a-z_]+\)\s*=\s*"[^"]*"\]', '', text)
    text = re.sub(r'\n  // RangeStream gets.*?rpc RangeStream\(RangeRequest\) returns \(stream RangeStreamResponse\) \{\s*\}\n', '\n', text, flags=re.S)
    text = re.sub(r'\n// RangeStreamResponse is.*?\nmessage RangeStreamResponse \{.*?\n\}\n', '\n', text, flags=re.S)
    return text

src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for rel in ["etcdserverpb/rpc.proto", "mvccpb/kv.proto", "authpb/auth.proto"]:
    out = dst / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(strip((src / "etcd/api" / rel).read_text()))
