exec(open("sem.py").read().split("put(\"a\",\"3\")")[0])
def txn(body): return post("/v3/kv/txn", body)
def P(k, v="", **kw): return {"request_put": dict(key=b(k), value=b(v), **kw)}
def R(k, **kw): return {"request_range": dict(key=b(k), **kw)}
def D(k, **kw): 
    if "range_end" in kw: kw["range_end"] = b(kw["range_end"])
    return {"request_delete_range": dict(key=b(k), **kw)}
def T(s, f=[], c=[]): return {"request_txn": {"compare": c, "success": s, "failure": f}}
rev = lambda: show(rng(key="a"))["rev"]
print("lease", post("/v3/lease/grant", {"TTL": 1000, "ID": 7}))
for name, f in [
  ("ignore_value missing", lambda: put("p", "", ignore_value=True)),
  ("ignore_lease missing", lambda: put("p", "x", ignore_lease=True)),
  ("ignore_value with value", lambda: put("p", "x", ignore_value=True)),
  ("ignore_lease with lease", lambda: put("p", "x", ignore_lease=True, lease=7)),
  ("ignore_value with value on missing+lease", lambda: put("p", "x", ignore_value=True, lease=99)),
  ("put unknown lease", lambda: put("p", "x", lease=99)),
  ("put ignore_value unknown lease missing key", lambda: put("p", "", ignore_value=True, lease=99)),
  ("put p=1 lease7 prev_kv", lambda: put("p", "1", lease=7, prev_kv=True)),
  ("put p=2 prev_kv", lambda: put("p", "2", prev_kv=True, lease=7)),
  ("ignore_value keeps value, prev_kv", lambda: put("p", "", ignore_value=True, prev_kv=True)),
  ("ignore_lease keeps lease", lambda: put("p", "3", ignore_lease=True, prev_kv=True)),
  ("both", lambda: put("p", "", ignore_lease=True, ignore_value=True, prev_kv=True)),
  ("get p", lambda: rng(key="p")),
  ("put q prev_kv (absent)", lambda: put("q", "1", prev_kv=True)),
  ("delete p..r prev_kv", lambda: dele("p", range_end="r", prev_kv=True)),
  ("delete p..r again", lambda: dele("p", range_end="r", prev_kv=True)),
  ("delete no prev_kv", lambda: (put("s","1"), dele("s"))[1]),
  ("txn ignore_value missing", lambda: txn({"success":[P("n1","1"), P("m", ignore_value=True)]})),
  ("txn ignore_value missing not taken", lambda: txn({"compare":[{"key":b("zz"),"target":"VERSION","result":"EQUAL","version":"1"}], "success":[P("m", ignore_value=True)], "failure":[P("n2","1")]})),
  ("txn ops prev_kv", lambda: txn({"success":[P("t1","a"), P("t2","b")]})),
  ("txn ops prev_kv 2", lambda: txn({"success":[R("t1"), P("t1","c", prev_kv=True), D("t2", prev_kv=True), T([P("t3","x", prev_kv=True), R("t1", keys_only=True)]), P("t4", ignore_value=True)]})),
  ("txn ignore_value ok", lambda: txn({"success":[R("t1"), P("t1", ignore_value=True, prev_kv=True), D("t2", prev_kv=True)]})),
  ("txn value provided", lambda: txn({"success":[P("t1", "v", ignore_value=True)]})),
  ("txn lease provided", lambda: txn({"success":[P("t1", "v", ignore_lease=True, lease=7)]})),
  # ("txn delete-from then put ignore": etcd 3.4.23 panics: "unexpected error during txn: etcdserver: key not found")
]:
    print(name, "=>", json.dumps(show(f())))
print("rev now", rev())
