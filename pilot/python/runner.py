# The Python side of an fxr worker: one interpreter, started once and reused for every task of
# the worker. Requests and replies are length-prefixed JSON on the interpreter's original stdin
# and stdout; the functions' own prints go to stderr. Functions are compiled once, on their first
# task, and kept by id.
import base64
import json
import os
import pickle
import struct
import sys
import traceback

proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.dup2(2, 1)
sys.stdin = open(os.devnull)
sys.stdout = sys.stderr

VERSION = "%d.%d.%d" % sys.version_info[:3]
MAX_REQUEST = 1 << 30
functions = {}


def read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = proto_in.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def send(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    proto_out.write(struct.pack(">I", len(data)) + data)


def failure(kind, message):
    return {"ok": False, "kind": kind, "message": message}


def load(req):
    fid = req["fid"]
    fn = functions.get(fid)
    if fn is not None:
        return fn, None
    source = req.get("source")
    entry = req.get("entry", "")
    if source is None:
        return None, failure("function_error", "the worker has no source for function %s" % fid)
    try:
        code = compile(source, "<fxr function %s>" % entry, "exec")
        ns = {"__name__": "__fxr_function__"}
        exec(code, ns)
    except SyntaxError:
        return None, failure(
            "function_error",
            "cannot load the function: syntax error\n" + traceback.format_exc(limit=0),
        )
    except BaseException:
        return None, failure(
            "function_error", "cannot load the function\n" + traceback.format_exc()
        )
    fn = ns.get(entry)
    if not callable(fn):
        return None, failure(
            "function_error",
            "the source defines no function `%s` (it defines %s)"
            % (entry, ", ".join(sorted(k for k in ns if not k.startswith("__"))) or "nothing"),
        )
    functions[fid] = fn
    return fn, None


def run(req):
    fn, err = load(req)
    if err is not None:
        return err
    args = req.get("args")
    use_pickle = isinstance(args, dict) and "pickle" in args
    try:
        if use_pickle:
            want = req.get("python")
            if want and want.split(".")[:2] != VERSION.split(".")[:2]:
                return failure(
                    "function_error",
                    "pickled arguments need the same Python on both sides: the client runs %s,"
                    " this endpoint runs %s" % (want, VERSION),
                )
            a, kw = pickle.loads(base64.b64decode(args["pickle"]))
        elif args is None:
            a, kw = (), {}
        elif isinstance(args, dict) and set(args) <= {"args", "kwargs"}:
            a, kw = args.get("args", []), args.get("kwargs", {})
        elif isinstance(args, dict):
            a, kw = (), args
        else:
            a, kw = (args,), {}
    except BaseException:
        return failure("function_error", "cannot decode the arguments\n" + traceback.format_exc())
    # The attempt number (0 first, more when re-run after a lost worker or manager).
    fn.__globals__["fxr_task_attempt"] = req.get("attempt", 0)
    try:
        value = fn(*a, **kw)
    except BaseException as e:
        # The traceback from the function's own frame down: the runner's frame is noise.
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
        return {"ok": False, "kind": "function_error", "message": tb, "exception": type(e).__name__}
    if use_pickle:
        try:
            return {"ok": True, "result": {"pickle": base64.b64encode(pickle.dumps(value)).decode()}}
        except BaseException:
            return failure("function_error", "cannot pickle the result\n" + traceback.format_exc())
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        return failure(
            "function_error",
            "the result is not JSON (%s); ask for pickle to return any Python object" % e,
        )
    return {"ok": True, "result": value}


def main():
    send({"ready": True, "version": VERSION, "pid": os.getpid()})
    while True:
        head = read_exact(4)
        if head is None:
            return
        (n,) = struct.unpack(">I", head)
        if n > MAX_REQUEST:
            return
        body = read_exact(n)
        if body is None:
            return
        batch = json.loads(body)
        send([run(req) for req in batch])


main()
