exec(open("sem2.py").read().split("rev = lambda")[0])
def R(k, **kw):
    if "range_end" in kw: kw["range_end"] = b(kw["range_end"])
    return {"request_range": dict(key=b(k), **kw)}
put("a","3"); put("b","1"); put("c","2"); put("a","1"); put("d","0"); put("b","9"); put("b","5"); dele("c"); put("c","7"); put("e","4")
for name, f in [
  ("txn ops", lambda: txn({"success":[P("t1","a"), P("t2","b")]})),
  ("txn ops prev_kv 2", lambda: txn({"success":[R("t1"), P("t1","c", prev_kv=True), D("t2", prev_kv=True), T([P("t3","x", prev_kv=True), R("t1", keys_only=True), R("t", range_end="u", count_only=True)]), D("zz", prev_kv=True), R("t1")]})),
  ("txn readonly", lambda: txn({"success":[R("t1", sort_order="DESCEND"), R("a", range_end="z", sort_target="MOD", sort_order="DESCEND", limit=2, keys_only=True), R("a", range_end="z", min_create_revision=3, limit=1)]})),
  ("txn 3 level 126", lambda: txn({"success":[T([T([P(f"L{i}","v") for i in range(126)])])]})),
  ("txn 3 level 127", lambda: txn({"success":[T([T([P(f"M{i}","v") for i in range(127)])])]})),
  ("txn nested 2 ops each x 64 ", lambda: txn({"success":[T([P(f"N{j}_{i}","v") for i in range(2)]) for j in range(64)]})),
  ("txn nested 2 ops each x 65 ", lambda: txn({"success":[T([P(f"O{j}_{i}","v") for i in range(2)]) for j in range(65)]})),
  ("count", lambda: rng(key="L", range_end="P", count_only=True)),
]:
    r = show(f())
    print(name, "=>", json.dumps(r)[:700])
