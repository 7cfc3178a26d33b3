import { describe, expect, it } from "vitest";
import { RegistryStateMachine } from "../../../server/fsm/registry.js";
import { Log, snapshotOf, spec } from "./registry-log.js";

describe("registry state machine", () => {
  it("keeps createIndex and registeredAt when an instance registers again", () => {
    const log = new Log();
    log.apply({ op: "register", instance: spec("web", "a"), now: 1000 });
    log.apply({ op: "register", instance: { ...spec("web", "a"), port: 81 }, now: 2000 });
    const instance = log.fsm.instance({ service: "web", id: "a" });
    expect(instance).toMatchObject({
      port: 81,
      createIndex: 1,
      modifyIndex: 2,
      registeredAt: 1000,
      lastHeartbeatAt: 2000,
    });
    expect(log.fsm.instances("web").index).toBe(2);
  });

  it("tells member listeners of a member's addresses, and wakes no service's watchers for it", () => {
    const log = new Log();
    const changes: (string | null)[] = [];
    let members = 0;
    log.fsm.onChange((service) => changes.push(service));
    log.fsm.onMembers(() => members++);
    log.apply({ op: "member", member: { id: "n4", raft: "r", http: "h", grpc: "g", dns: "d" } });
    expect(members).toBe(1);
    expect(changes).toEqual([]);
    log.apply({ op: "register", instance: spec("web", "a"), now: 1000 });
    expect(changes).toEqual(["web"]);
  });

  it("an expired TTL shows as critical but keeps the reported status, and a heartbeat revives it", () => {
    const log = new Log();
    log.apply({ op: "register", instance: { ...spec("web", "a"), status: "warning" }, now: 0 });
    log.apply({
      op: "expire",
      instances: [{ service: "web", id: "a", modifyIndex: 1 }],
      now: 10_000,
    });
    expect(log.fsm.instance({ service: "web", id: "a" })).toMatchObject({
      status: "warning",
      effectiveStatus: "critical",
      expiredAt: 10_000,
      output: "TTL expired",
    });
    log.apply({
      op: "set-status",
      service: "web",
      id: "a",
      status: "warning",
      output: "",
      now: 11_000,
    });
    expect(log.fsm.instance({ service: "web", id: "a" })).toMatchObject({
      effectiveStatus: "warning",
      expiredAt: null,
      lastHeartbeatAt: 11_000,
    });
  });

  it("evicts only instances still expired when the entry applies", () => {
    const log = new Log();
    for (const id of ["a", "b"]) log.apply({ op: "register", instance: spec("web", id), now: 0 });
    const both = [
      { service: "web", id: "a" },
      { service: "web", id: "b" },
    ];
    log.apply({
      op: "expire",
      instances: both.map((ref, i) => ({ ...ref, modifyIndex: i + 1 })),
      now: 1,
    });
    log.apply({ op: "set-status", service: "web", id: "b", status: "passing", output: "", now: 2 });
    expect(log.apply({ op: "evict", instances: both })).toEqual({ ok: true, changed: 1 });
    expect(log.fsm.instances("web").instances.map((i) => i.id)).toEqual(["b"]);
  });

  it("a checkpoint records remaining TTLs without waking watchers or moving the service index", () => {
    const log = new Log();
    log.apply({ op: "register", instance: spec("web", "a"), now: 0 });
    const woken: (string | null)[] = [];
    log.fsm.onChange((service) => woken.push(service));
    log.apply({
      op: "checkpoint",
      ttls: [{ service: "web", id: "a", remainingMs: 4000, lastHeartbeatAt: 7 }],
      sessions: [],
      now: 8,
    });
    expect(woken).toEqual([]);
    expect(log.fsm.instances("web").index).toBe(1);
    expect(log.fsm.instance({ service: "web", id: "a" })).toMatchObject({
      ttlRemainingMs: 4000,
      lastHeartbeatAt: 7,
    });
  });

  it("tells listeners which service changed", () => {
    const log = new Log();
    const woken: (string | null)[] = [];
    log.fsm.onChange((service) => woken.push(service));
    log.apply({ op: "register", instance: spec("web", "a"), now: 0 });
    log.apply({ op: "register", instance: spec("db", "a"), now: 0 });
    log.apply({ op: "deregister", service: "web", id: "a" });
    expect(woken).toEqual(["web", "db", "web"]);
  });

  it("answers not-found for an unknown instance and changes nothing", () => {
    const log = new Log();
    log.apply({ op: "register", instance: spec("web", "a"), now: 0 });
    const before = { web: log.fsm.instances("web"), list: log.fsm.services() };
    const missing = { service: "web", id: "zz" };
    expect(log.apply({ op: "deregister", ...missing })).toMatchObject({
      ok: false,
      code: "not-found",
    });
    expect(
      log.apply({ op: "set-status", ...missing, status: "critical", output: "", now: 1 }),
    ).toMatchObject({ ok: false, code: "not-found" });
    expect({ web: log.fsm.instances("web"), list: log.fsm.services() }).toEqual(before);
  });

  it("a snapshot restores the same state, including a removed service's index and the mode", () => {
    const log = new Log();
    log.apply({ op: "register", instance: spec("web", "a"), now: 0 });
    log.apply({ op: "register", instance: spec("db", "a"), now: 0 });
    log.apply({ op: "deregister", service: "db", id: "a" });
    log.apply({ op: "self-preservation", mode: "off" });
    const copy = new RegistryStateMachine();
    copy.restore(snapshotOf(log.fsm));
    expect(copy.stateHash()).toEqual(log.fsm.stateHash());
    expect(copy.instances("db")).toEqual({ index: 3, instances: [] });
    expect(copy.selfPreservationMode).toBe("off");
    expect(copy.services().map((s) => s.name)).toEqual(["web"]);
  });

  it("a snapshot holds the state it was asked at, however much applies while its pieces are taken", () => {
    const log = new Log();
    for (let n = 0; n < 1200; n++)
      log.apply({ op: "register", instance: spec(`svc-${n % 3}`, `id-${n}`), now: n });
    const asked = log.fsm.stateHash();
    const pieces = log.fsm.snapshot()[Symbol.iterator]();
    const taken = [pieces.next().value as Uint8Array];
    for (let n = 0; n < 1200; n += 7) {
      log.apply({
        op: "register",
        instance: { ...spec(`svc-${n % 3}`, `id-${n}`), port: 81 },
        now: 0,
      });
      log.apply({ op: "deregister", service: `svc-${(n + 1) % 3}`, id: `id-${n + 1}` });
    }
    log.apply({
      op: "expire",
      instances: [{ service: "svc-2", id: "id-2", modifyIndex: 3 }],
      now: 9,
    });
    log.apply({ op: "register", instance: spec("late", "a"), now: 0 });
    log.apply({ op: "register", instance: { ...spec("svc-0", "id-0"), tags: ["new"] }, now: 0 });
    log.apply({ op: "self-preservation", mode: "on" });
    log.apply({ op: "member", member: { id: "n4", raft: "r", http: "h", grpc: "g", dns: "d" } });
    log.apply({ op: "forwarding-key", key: "k" });
    log.apply({ op: "acl-bootstrap", accessor: "root", secretHash: "h" });
    log.apply({
      op: "session-create",
      session: {
        id: "s",
        name: "",
        ttlMs: 10_000,
        behavior: "release",
        lockDelayMs: 0,
        client: "c",
      },
      maxPerClient: 5,
    });
    for (let next = pieces.next(); next.done !== true; next = pieces.next()) taken.push(next.value);
    expect(taken.length).toBeGreaterThan(1);
    const restored = new RegistryStateMachine();
    restored.restore(Buffer.concat(taken));
    expect(restored.stateHash()).toEqual(asked);
    expect(log.fsm.stateHash()).not.toEqual(asked);
  });

  it("remembers every tag a service's instances carried, through removal and snapshots", () => {
    const log = new Log();
    log.apply({ op: "register", instance: { ...spec("web", "a"), tags: ["blue"] }, now: 0 });
    log.apply({ op: "deregister", service: "web", id: "a" });
    const copy = new RegistryStateMachine();
    copy.restore(snapshotOf(log.fsm));
    for (const fsm of [log.fsm, copy]) {
      expect(fsm.tagKnown("web", "blue")).toBe(true);
      expect(fsm.tagKnown("web", "green")).toBe(false);
    }
  });

  it("caps the sessions one client holds, counting only those that have not ended", () => {
    const log = new Log();
    const create = (id: string, client: string) =>
      log.apply({
        op: "session-create",
        session: { id, name: "", ttlMs: 10_000, behavior: "release", lockDelayMs: 0, client },
        maxPerClient: 2,
      });
    expect(create("a", "10.0.0.1")).toMatchObject({ ok: true });
    expect(create("b", "10.0.0.1")).toMatchObject({ ok: true });
    expect(create("c", "10.0.0.1")).toEqual({
      ok: false,
      code: "too-many",
      message: expect.stringContaining("already holds 2 sessions"),
    });
    expect(log.fsm.locks.session("c")).toBeUndefined();
    expect(create("d", "10.0.0.2")).toMatchObject({ ok: true });
    log.apply({ op: "session-end", id: "a", reason: "deleted", now: 1 });
    expect(create("e", "10.0.0.1")).toMatchObject({ ok: true });
    // A node restored from a snapshot counts alike.
    const restored = new Log();
    restored.fsm.restore(snapshotOf(log.fsm));
    restored.index = log.index;
    expect(
      restored.apply({
        op: "session-create",
        session: {
          id: "f",
          name: "",
          ttlMs: 10_000,
          behavior: "release",
          lockDelayMs: 0,
          client: "10.0.0.1",
        },
        maxPerClient: 2,
      }),
    ).toMatchObject({ ok: false, code: "too-many" });
  });
});
