import json, base64, sys, urllib.request
def b(s): return base64.b64encode(s.encode()).decode()
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:23791"+path, data=json.dumps(body).encode(), headers={"Content-Type":"application/json"})
    try:
        with urllib.request.urlopen(req) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
def nested(n, prefix):
    return {"success":[{"request_txn":{"success":[{"request_put":{"key":b(f"{prefix}{i}"),"value":b("v")}}]}} for i in range(n)]}
for n, p in [(128, "a"), (127, "b")]:
    st, body = post("/v3/kv/txn", nested(n, p))
    print(n, st, json.dumps(body)[:300])
    st, body = post("/v3/kv/range", {"key": b(p), "range_end": b(chr(ord(p)+1)), "count_only": True})
    print("  range", p, st, body)
# also: 2-level budget probes
def deep(outer, inner):
    return {"success":[{"request_txn":{"success":[{"request_put":{"key":b(f"d{outer}_{inner}_{i}"),"value":b("v")}} for i in range(inner)]}}] + [{"request_range":{"key":b("x")}} for _ in range(outer-1)]}
for outer, inner in [(64,64),(64,65),(1,127),(1,128),(2,126),(2,127)]:
    st, body = post("/v3/kv/txn", deep(outer, inner))
    print("outer", outer, "inner", inner, st, json.dumps(body)[:160])
# compares count toward opc too
c = {"compare":[{"key":b("x"),"target":"VERSION","result":"EQUAL","version":"0"}]*100, "success":[{"request_txn":{"success":[{"request_put":{"key":b(f"c{i}"),"value":b("v")}} for i in range(28)]}}]}
print("100 compares + nested 28", post("/v3/kv/txn", c))
c["success"][0]["request_txn"]["success"].append({"request_put":{"key":b("c28"),"value":b("v")}})
print("100 compares + nested 29", post("/v3/kv/txn", c))
# failure side budget
f = {"compare":[{"key":b("x"),"target":"VERSION","result":"EQUAL","version":"5"}], "success":[{"request_range":{"key":b("x")}}]*100, "failure":[{"request_txn":{"success":[{"request_put":{"key":b(f"f{i}"),"value":b("v")}} for i in range(29)]}}]}
print("100 success + nested-in-failure 29", post("/v3/kv/txn", f))
print("status", post("/v3/kv/range", {"key": b("x")}))
