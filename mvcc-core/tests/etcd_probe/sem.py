import json, base64, urllib.request
def b(s): return base64.b64encode(s.encode()).decode()
def d(s): return base64.b64decode(s).decode()
def post(path, body):
    req = urllib.request.Request("http://127.0.0.1:23791"+path, data=json.dumps(body).encode(), headers={"Content-Type":"application/json"})
    try:
        with urllib.request.urlopen(req) as r: return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"ERR": json.loads(e.read())["error"]}
def kvs(l): return [ (d(k["key"]), d(k.get("value","")), int(k.get("create_revision",0)), int(k.get("mod_revision",0)), int(k.get("version",0)), int(k.get("lease",0))) for k in l]
def show(r):
    if "ERR" in r: return "ERR "+r["ERR"]
    out = {}
    if "header" in r: out["rev"] = int(r["header"].get("revision",0))
    for f in ["kvs","prev_kvs"]:
        if f in r: out[f] = kvs(r[f])
    if "prev_kv" in r: out["prev_kv"] = kvs([r["prev_kv"]])[0]
    for f in ["more","count","deleted","succeeded"]:
        if f in r: out[f] = r[f]
    if "responses" in r: out["responses"] = [ {k: show(v) for k,v in x.items()} for x in r["responses"]]
    return out
def put(k,v,**kw): return post("/v3/kv/put", dict(key=b(k), value=b(v), **kw))
def rng(**kw):
    kw["key"] = b(kw["key"]);
    if "range_end" in kw: kw["range_end"] = b(kw["range_end"])
    return post("/v3/kv/range", kw)
def dele(k, **kw):
    kw["key"] = b(k)
    if "range_end" in kw: kw["range_end"] = b(kw["range_end"])
    return post("/v3/kv/deleterange", kw)
put("a","3"); put("b","1"); put("c","2"); put("a","1"); put("d","0"); put("b","9"); put("b","5"); dele("c"); put("c","7"); put("e","4")
print("state", show(rng(key="a", range_end="z")))
queries = []
for tgt in ["KEY","VERSION","CREATE","MOD","VALUE"]:
    for order in ["NONE","ASCEND","DESCEND"]:
        for limit in [0,2]:
            queries.append(dict(sort_target=tgt, sort_order=order, limit=limit))
for q in [dict(min_mod_revision=6), dict(max_mod_revision=8), dict(min_create_revision=3), dict(max_create_revision=6),
          dict(min_mod_revision=6, max_mod_revision=10), dict(min_create_revision=3, max_create_revision=10),
          dict(min_mod_revision=6, limit=1), dict(min_mod_revision=6, limit=3), dict(min_mod_revision=6, limit=4),
          dict(max_create_revision=6, limit=2), dict(min_mod_revision=11, limit=1),
          dict(keys_only=True), dict(keys_only=True, limit=2), dict(count_only=True), dict(count_only=True, limit=2),
          dict(count_only=True, min_mod_revision=8), dict(keys_only=True, sort_target="VALUE", sort_order="DESCEND", limit=2),
          dict(limit=5), dict(limit=4), dict(revision=5), dict(revision=5, sort_target="MOD", sort_order="DESCEND", limit=1),
          dict(revision=8, min_create_revision=3, limit=1), dict(min_mod_revision=99), dict(sort_order="DESCEND", limit=1, min_mod_revision=6, max_mod_revision=10)]:
    queries.append(q)
for q in queries:
    r = rng(key="a", range_end="z", **q)
    s = show(r)
    print("Q", json.dumps(q), "=>", json.dumps(s))
