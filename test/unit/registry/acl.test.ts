import { describe, expect, it } from "vitest";
import { AclResolver, hashSecret } from "../../../server/acl/resolver.js";
import { Authorizer, formatRule, parseRule } from "../../../server/acl/rules.js";
import { RegistryStateMachine } from "../../../server/fsm/registry.js";
import { Log, snapshotOf } from "./registry-log.js";

const rules = (...texts: string[]) => texts.map(parseRule);

describe("ACL rules", () => {
  it("the longest matching prefix decides, and nothing matching is a denial", () => {
    const authorizer = new Authorizer([
      {
        name: "p",
        description: "",
        rules: rules("service:=read", "service:web=write", "service:web-admin=deny"),
      },
    ]);
    const can = (name: string, access: "read" | "write") =>
      authorizer.allows({ resource: "service", name, access });
    expect(can("web", "write")).toBe(true);
    expect(can("web-api", "write")).toBe(true);
    expect(can("web-admin", "read")).toBe(false);
    expect(can("db", "read")).toBe(true);
    expect(can("db", "write")).toBe(false);
    expect(authorizer.allows({ resource: "lock", name: "jobs", access: "read" })).toBe(false);
    expect(authorizer.allows({ resource: "cluster", name: "", access: "read" })).toBe(false);
  });

  it("of two policies with the same prefix, deny beats write beats read", () => {
    const authorizer = new Authorizer([
      { name: "a", description: "", rules: rules("lock:jobs/=read", "session=read") },
      { name: "b", description: "", rules: rules("lock:jobs/=write", "session=write") },
      { name: "c", description: "", rules: rules("lock:jobs/secret=deny") },
      { name: "d", description: "", rules: rules("lock:jobs/secret=write") },
    ]);
    expect(authorizer.allows({ resource: "lock", name: "jobs/nightly", access: "write" })).toBe(
      true,
    );
    expect(authorizer.allows({ resource: "lock", name: "jobs/secret", access: "read" })).toBe(
      false,
    );
    expect(authorizer.allows({ resource: "session", name: "", access: "write" })).toBe(true);
  });

  it("parses and formats the CLI's form, and names what is wrong", () => {
    for (const text of ["service:web=write", "lock:=read", "cluster=read", "session=write"])
      expect(formatRule(parseRule(text))).toBe(text);
    expect(() => parseRule("service:web=admin")).toThrow(/not a rule/);
    expect(() => parseRule("nodes=read")).toThrow(/not a rule/);
    expect(() => parseRule("cluster:x=read")).toThrow(/take no prefix/);
  });
});

describe("ACL state", () => {
  it("tokens are stored hashed, resolve to their policies, and stop resolving when deleted", () => {
    const log = new Log();
    const acl = new AclResolver(true, log.fsm.acl);
    log.apply({
      op: "acl-policy-set",
      policy: { name: "web", description: "", rules: rules("service:web=write") },
    });
    const created = log.apply({
      op: "acl-token-set",
      mode: "create",
      token: { accessor: "t1", secretHash: hashSecret("s1"), policies: ["web"], description: "" },
    });
    expect(created.ok).toBe(true);
    expect(JSON.stringify(log.fsm.acl.toStored())).not.toContain('"s1"');
    const caller = acl.resolve("s1");
    expect(caller?.accessor).toBe("t1");
    expect(caller?.authorizer.allows({ resource: "service", name: "web", access: "write" })).toBe(
      true,
    );
    expect(caller?.authorizer.allows({ resource: "service", name: "db", access: "read" })).toBe(
      false,
    );
    expect(acl.resolve("nope")).toBeUndefined();
    // A deleted policy leaves its tokens; one made again under its name does not grant it.
    log.apply({ op: "acl-policy-delete", name: "web" });
    expect(log.fsm.acl.token("t1")?.policies).toEqual([]);
    log.apply({
      op: "acl-policy-set",
      policy: { name: "web", description: "", rules: rules("service:=write") },
    });
    expect(
      acl.resolve("s1")?.authorizer.allows({ resource: "service", name: "web", access: "read" }),
    ).toBe(false);
    log.apply({ op: "acl-token-delete", accessor: "t1" });
    expect(acl.resolve("s1")).toBeUndefined();
  });

  it("a token naming an unknown policy, a duplicate, or a change to built-ins is refused", () => {
    const log = new Log();
    const token = {
      accessor: "t1",
      secretHash: hashSecret("s1"),
      policies: ["x"],
      description: "",
    };
    expect(log.apply({ op: "acl-token-set", mode: "create", token })).toMatchObject({
      ok: false,
      code: "not-found",
    });
    const plain = { ...token, policies: [] };
    expect(log.apply({ op: "acl-token-set", mode: "create", token: plain }).ok).toBe(true);
    expect(log.apply({ op: "acl-token-set", mode: "create", token: plain })).toMatchObject({
      ok: false,
      code: "conflict",
    });
    expect(
      log.apply({
        op: "acl-policy-set",
        policy: { name: "global-management", description: "", rules: [] },
      }),
    ).toMatchObject({ ok: false, code: "conflict" });
    expect(log.apply({ op: "acl-token-delete", accessor: "anonymous" })).toMatchObject({
      ok: false,
      code: "conflict",
    });
  });

  it("bootstrap happens once; the anonymous token's policies apply without a token", () => {
    const log = new Log();
    const acl = new AclResolver(true, log.fsm.acl);
    expect(
      acl.anonymous().authorizer.allows({ resource: "service", name: "web", access: "read" }),
    ).toBe(false);
    const first = log.apply({ op: "acl-bootstrap", accessor: "m1", secretHash: hashSecret("one") });
    const second = log.apply({
      op: "acl-bootstrap",
      accessor: "m2",
      secretHash: hashSecret("two"),
    });
    expect(first.ok && first.token?.accessor).toBe("m1");
    expect(second.ok && second.token).toBeUndefined();
    expect(acl.resolve("two")).toBeUndefined();
    expect(
      acl.resolve("one")?.authorizer.allows({ resource: "acl", name: "", access: "write" }),
    ).toBe(true);
    log.apply({
      op: "acl-policy-set",
      policy: { name: "dns", description: "", rules: rules("service:=read") },
    });
    log.apply({
      op: "acl-token-set",
      mode: "update",
      token: { accessor: "anonymous", secretHash: "", policies: ["dns"], description: "" },
    });
    expect(
      acl.anonymous().authorizer.allows({ resource: "service", name: "web", access: "read" }),
    ).toBe(true);
    expect(acl.resolve(null)?.accessor).toBe("anonymous");
  });

  it("a snapshot carries tokens and policies; replicas that applied the same log agree", () => {
    const log = new Log();
    log.apply({
      op: "acl-policy-set",
      policy: { name: "web", description: "d", rules: rules("service:web=write") },
    });
    log.apply({
      op: "acl-token-set",
      mode: "create",
      token: { accessor: "t1", secretHash: hashSecret("s1"), policies: ["web"], description: "" },
    });
    const restored = new RegistryStateMachine();
    restored.restore(snapshotOf(log.fsm));
    expect(restored.stateHash()).toEqual(log.fsm.stateHash());
    const acl = new AclResolver(true, restored.acl);
    expect(acl.resolve("s1")?.accessor).toBe("t1");
    expect(restored.acl.policy("web")?.description).toBe("d");
  });

  it("with ACLs off every caller may do everything", () => {
    const acl = new AclResolver(false, new RegistryStateMachine().acl);
    expect(
      acl.resolve("anything")?.authorizer.allows({ resource: "acl", name: "", access: "write" }),
    ).toBe(true);
  });
});
