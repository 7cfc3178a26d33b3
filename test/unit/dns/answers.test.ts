import { describe, expect, it } from "vitest";
import { answer, type RegistryView, rcodes, types, weightedOrder } from "../../../dns/answers.js";
import { parseName } from "../../../dns/names.js";
import type { Instance } from "../../../server/fsm/registry.js";
import { Prng } from "../../sim/prng.js";

function instance(id: string, fields: Partial<Instance> = {}): Instance {
  return {
    id,
    service: "web",
    address: "10.0.0.1",
    port: 8080,
    tags: [],
    meta: {},
    weight: 100,
    version: "",
    status: "passing",
    ttlMs: 10_000,
    session: null,
    effectiveStatus: "passing",
    output: "",
    expiredAt: null,
    ttlRemainingMs: 10_000,
    registeredAt: 0,
    lastHeartbeatAt: 0,
    createIndex: 1,
    modifyIndex: 1,
    ...fields,
  };
}

function registry(
  services: Record<string, Instance[]>,
  tags: string[] = [],
  readable: (service: string) => boolean = () => true,
): RegistryView {
  return {
    service: (name) => ({ known: name in services, instances: services[name] ?? [] }),
    tagKnown: (_service, tag) => tags.includes(tag),
    readable,
  };
}

const options = { domain: "muster", ttlSeconds: 5, negativeTtlSeconds: 7 };

function ask(view: RegistryView, qname: string, qtype: number) {
  return answer(parseName(qname, "muster"), qname, qtype, view, options, (list) => list);
}

describe("DNS answers", () => {
  const view = registry(
    {
      web: [
        instance("w1", { address: "10.0.0.1", tags: ["v1"], weight: 10 }),
        instance("w2", { address: "10.0.0.2", tags: ["v2"] }),
        instance("w3", { address: "fd00::3", tags: ["v1"] }),
        instance("w4", { address: "10.0.0.4", effectiveStatus: "critical" }),
        instance("w5", { address: "10.0.0.5", effectiveStatus: "warning" }),
      ],
      db: [instance("d1", { service: "db", effectiveStatus: "critical" })],
      api: [instance("a1", { service: "api", address: "api.internal.example" })],
    },
    ["v1", "v2", "gone"],
  );

  it("A and AAAA list healthy instances only (passing and warning)", () => {
    const a = ask(view, "web.service.muster", types.A);
    expect(a.rcode).toBe(rcodes.noError);
    expect(a.answers.map((r) => r.address)).toEqual(["10.0.0.1", "10.0.0.2", "10.0.0.5"]);
    expect(a.answers.every((r) => r.ttl === 5)).toBe(true);
    const aaaa = ask(view, "web.service.muster", types.AAAA);
    expect(aaaa.answers.map((r) => r.address)).toEqual(["fd00::3"]);
  });

  it("SRV carries weight and port, targets the instance name, with addresses in additional", () => {
    const srv = ask(view, "_web._tcp.service.muster", types.SRV);
    expect(srv.answers.map((r) => [r.target, r.weight, r.port, r.priority])).toEqual([
      ["w1.web.instance.muster", 10, 8080, 1],
      ["w2.web.instance.muster", 100, 8080, 1],
      ["w3.web.instance.muster", 100, 8080, 1],
      ["w5.web.instance.muster", 100, 8080, 1],
    ]);
    expect(srv.additionals.map((r) => [r.name, r.type, r.address])).toEqual([
      ["w1.web.instance.muster", types.A, "10.0.0.1"],
      ["w2.web.instance.muster", types.A, "10.0.0.2"],
      ["w3.web.instance.muster", types.AAAA, "fd00::3"],
      ["w5.web.instance.muster", types.A, "10.0.0.5"],
    ]);
  });

  it("tag forms keep only instances with the tag", () => {
    expect(ask(view, "v1.web.service.muster", types.A).answers.map((r) => r.address)).toEqual([
      "10.0.0.1",
    ]);
    expect(ask(view, "_web._v1.service.muster", types.SRV).answers.map((r) => r.target)).toEqual([
      "w1.web.instance.muster",
      "w3.web.instance.muster",
    ]);
  });

  it("NXDOMAIN with the SOA for an unknown service or a tag never seen; NODATA for a tag gone", () => {
    const unknown = ask(view, "nope.service.muster", types.A);
    expect(unknown.rcode).toBe(rcodes.nxDomain);
    expect(unknown.authorities.map((r) => [r.type, r.minimum, r.ttl])).toEqual([[types.SOA, 7, 7]]);
    expect(ask(view, "v9.web.service.muster", types.A).rcode).toBe(rcodes.nxDomain);
    const gone = ask(view, "gone.web.service.muster", types.A);
    expect([gone.rcode, gone.answers.length, gone.authorities.length]).toEqual([
      rcodes.noError,
      0,
      1,
    ]);
  });

  it("NODATA with the SOA for a known service without healthy instances or the record type", () => {
    const critical = ask(view, "db.service.muster", types.A);
    expect([critical.rcode, critical.answers.length, critical.authorities[0]?.type]).toEqual([
      rcodes.noError,
      0,
      types.SOA,
    ]);
    const txt = ask(view, "web.service.muster", 16);
    expect([txt.rcode, txt.answers.length]).toEqual([rcodes.noError, 0]);
  });

  it("instance names answer their address directly, a host name as CNAME; REFUSED outside", () => {
    expect(ask(view, "w3.web.instance.muster", types.AAAA).answers.map((r) => r.address)).toEqual([
      "fd00::3",
    ]);
    expect(
      ask(view, "a1.api.instance.muster", types.A).answers.map((r) => [r.type, r.domain]),
    ).toEqual([[types.CNAME, "api.internal.example"]]);
    // A service's address list leaves host names out.
    expect(ask(view, "api.service.muster", types.A).answers).toEqual([]);
    expect(ask(view, "w9.web.instance.muster", types.A).rcode).toBe(rcodes.nxDomain);
    expect(ask(view, "web.service.example", types.A).rcode).toBe(rcodes.refused);
  });

  it("a weighted order puts each instance first in proportion to its weight", () => {
    const prng = new Prng(42);
    const heavy = instance("heavy", { weight: 900 });
    const light = instance("light", { weight: 100 });
    let heavyFirst = 0;
    const trials = 10_000;
    for (let trial = 0; trial < trials; trial++) {
      const [first] = weightedOrder(
        [light, heavy],
        (i) => i.weight,
        () => prng.float(),
      );
      if (first === heavy) heavyFirst++;
    }
    expect(heavyFirst / trials).toBeGreaterThan(0.88);
    expect(heavyFirst / trials).toBeLessThan(0.92);
  });

  it("a service the anonymous token may not read is REFUSED, in every form; others answer", () => {
    const guarded = registry(
      {
        web: [instance("w1", { address: "10.0.0.1", tags: ["v1"] })],
        db: [instance("d1", { service: "db", address: "10.0.0.9" })],
      },
      ["v1"],
      (service) => service === "web",
    );
    for (const [qname, qtype] of [
      ["db.service.muster", types.A],
      ["_db._tcp.service.muster", types.SRV],
      ["d1.db.instance.muster", types.A],
      ["nosuch.service.muster", types.A],
    ] as const) {
      const denied = ask(guarded, qname, qtype);
      expect(denied.rcode, qname).toBe(rcodes.refused);
      expect(denied.answers, qname).toEqual([]);
    }
    expect(ask(guarded, "v1.web.service.muster", types.A).answers.map((r) => r.address)).toEqual([
      "10.0.0.1",
    ]);
  });
});
