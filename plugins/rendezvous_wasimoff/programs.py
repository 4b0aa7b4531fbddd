"""Small WASI programs in WAT, compiled with wasmtime's wat2wasm: test and demo workloads.

``tool`` dispatches on argv[1]:
  echo A B ...   prints "A B ..." and a newline on stdout
  cat            copies stdin to stdout, then the environment (one "K=V" per line) to stderr
  quit N         prints "bye" on stderr and exits with status N
  sleep MS       busy-waits MS milliseconds (interruptible), then prints "slept"
  trap           executes `unreachable` (a WebAssembly trap)
"""

TOOL_WAT = r"""
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 200) "\n")
  (data (i32.const 201) " ")
  (data (i32.const 202) "slept")
  (data (i32.const 210) "bye")

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $n))

  (func $arg (param $i i32) (result i32)
    (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4)))))

  (func $atoi (param $p i32) (result i32) (local $n i32) (local $c i32)
    (block $done (loop $l
      (local.set $c (i32.load8_u (local.get $p)))
      (br_if $done (i32.lt_u (local.get $c) (i32.const 48)))
      (br_if $done (i32.gt_u (local.get $c) (i32.const 57)))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (i32.sub (local.get $c) (i32.const 48))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $l)))
    (local.get $n))

  (func $now (result i64)
    (drop (call $clock_time_get (i32.const 1) (i64.const 1000) (i32.const 24)))
    (i64.load (i32.const 24)))

  (func (export "_start") (local $argc i32) (local $i i32) (local $cmd i32) (local $p i32) (local $n i32) (local $envc i32) (local $end i64)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (local.set $argc (i32.load (i32.const 16)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (if (i32.lt_u (local.get $argc) (i32.const 2)) (then (call $proc_exit (i32.const 64))))
    (local.set $cmd (i32.load8_u (call $arg (i32.const 1))))
    (if (i32.eq (local.get $cmd) (i32.const 101)) (then
      (local.set $i (i32.const 2))
      (block $done (loop $l
        (br_if $done (i32.ge_u (local.get $i) (local.get $argc)))
        (if (i32.gt_u (local.get $i) (i32.const 2)) (then (call $write (i32.const 1) (i32.const 201) (i32.const 1))))
        (local.set $p (call $arg (local.get $i)))
        (call $write (i32.const 1) (local.get $p) (call $strlen (local.get $p)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
      (call $write (i32.const 1) (i32.const 200) (i32.const 1))
      (return)))
    (if (i32.eq (local.get $cmd) (i32.const 99)) (then
      (block $done (loop $l
        (i32.store (i32.const 0) (i32.const 65536))
        (i32.store (i32.const 4) (i32.const 65536))
        (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $n)))
        (call $write (i32.const 1) (i32.const 65536) (local.get $n))
        (br $l)))
      (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
      (local.set $envc (i32.load (i32.const 16)))
      (drop (call $environ_get (i32.const 32768) (i32.const 33792)))
      (local.set $i (i32.const 0))
      (block $done2 (loop $l2
        (br_if $done2 (i32.ge_u (local.get $i) (local.get $envc)))
        (local.set $p (i32.load (i32.add (i32.const 32768) (i32.mul (local.get $i) (i32.const 4)))))
        (call $write (i32.const 2) (local.get $p) (call $strlen (local.get $p)))
        (call $write (i32.const 2) (i32.const 200) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l2)))
      (return)))
    (if (i32.eq (local.get $cmd) (i32.const 113)) (then
      (call $write (i32.const 2) (i32.const 210) (i32.const 3))
      (call $proc_exit (call $atoi (call $arg (i32.const 2))))))
    (if (i32.eq (local.get $cmd) (i32.const 115)) (then
      (local.set $end (i64.add (call $now) (i64.mul (i64.extend_i32_u (call $atoi (call $arg (i32.const 2)))) (i64.const 1000000))))
      (block $done (loop $l
        (br_if $done (i64.ge_u (call $now) (local.get $end)))
        (br $l)))
      (call $write (i32.const 1) (i32.const 202) (i32.const 5))
      (call $write (i32.const 1) (i32.const 200) (i32.const 1))
      (return)))
    (if (i32.eq (local.get $cmd) (i32.const 116)) (then unreachable))
    (call $proc_exit (i32.const 64)))
)
"""


def tool_wasm() -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(TOOL_WAT))
