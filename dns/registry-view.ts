import type { RegistryStateMachine } from "../server/fsm/registry.js";
import type { RegistryView } from "./answers.js";

/**
 * DNS's read-only view of this node's registry. It remembers every tag it has seen on a
 * service, so that a tag that went away answers NODATA rather than NXDOMAIN.
 */
export class RegistryDnsView implements RegistryView {
  private readonly tagsSeen = new Map<string, Set<string>>();

  constructor(private readonly fsm: RegistryStateMachine) {
    for (const { name } of fsm.services()) this.noteTags(name);
  }

  /** Call on every change to `service` (null: all of them). */
  changed(service: string | null): void {
    if (service === null) for (const { name } of this.fsm.services()) this.noteTags(name);
    else this.noteTags(service);
  }

  service(name: string) {
    const { index, instances } = this.fsm.instances(name);
    return { known: index > 0, instances };
  }

  tagKnown(service: string, tag: string): boolean {
    return this.tagsSeen.get(service)?.has(tag) ?? false;
  }

  private noteTags(service: string): void {
    // Runs on every change to the service: no copy, no sort.
    let seen = this.tagsSeen.get(service);
    for (const instance of this.fsm.unsortedInstances(service)) {
      for (const tag of instance.tags) {
        if (seen === undefined) {
          seen = new Set();
          this.tagsSeen.set(service, seen);
        }
        seen.add(tag);
      }
    }
  }
}
