import type { AclResolver } from "../server/acl/resolver.js";
import type { RegistryStateMachine } from "../server/fsm/registry.js";
import type { RegistryView } from "./answers.js";

/** DNS's read-only view of this node's registry. */
export class RegistryDnsView implements RegistryView {
  constructor(
    private readonly fsm: RegistryStateMachine,
    private readonly acl: AclResolver,
  ) {}

  service(name: string) {
    const { index, instances } = this.fsm.instances(name);
    return { known: index > 0, instances };
  }

  tagKnown(service: string, tag: string): boolean {
    return this.fsm.tagKnown(service, tag);
  }

  readable(service: string): boolean {
    return this.acl
      .anonymous()
      .authorizer.allows({ resource: "service", name: service, access: "read" });
  }
}
