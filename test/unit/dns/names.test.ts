import { describe, expect, it } from "vitest";
import { parseName } from "../../../dns/names.js";

describe("DNS names", () => {
  it.each([
    ["web.service.muster", { kind: "service", service: "web", tag: null }],
    ["WEB.Service.MUSTER.", { kind: "service", service: "web", tag: null }],
    ["v1.web.service.muster", { kind: "service", service: "web", tag: "v1" }],
    ["_web._tcp.service.muster", { kind: "service", service: "web", tag: null }],
    ["_web._v1.service.muster", { kind: "service", service: "web", tag: "v1" }],
    ["w-1.web.instance.muster", { kind: "instance", service: "web", id: "w-1" }],
    ["a.b.web.instance.muster", { kind: "instance", service: "web", id: "a.b" }],
    ["muster", { kind: "apex" }],
    ["x.y.z.service.muster", { kind: "unknown" }],
    ["_web.service.muster", { kind: "unknown" }],
    ["web.instance.muster", { kind: "unknown" }],
    ["web.node.muster", { kind: "unknown" }],
    ["web_1.service.muster", { kind: "unknown" }],
    ["web.service.example", { kind: "outside" }],
    ["muster.example", { kind: "outside" }],
    ["", { kind: "outside" }],
  ])("%s", (name, expected) => {
    expect(parseName(name, "muster")).toEqual(expected);
  });

  it("works with a multi-label domain", () => {
    expect(parseName("web.service.dc1.internal.", "dc1.internal")).toEqual({
      kind: "service",
      service: "web",
      tag: null,
    });
    expect(parseName("web.service.internal", "dc1.internal")).toEqual({ kind: "outside" });
  });
});
