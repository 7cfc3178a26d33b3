import type * as grpc from "@grpc/grpc-js";
import type { GrpcUri } from "@grpc/grpc-js/build/src/uri-parser.js";
import type { MusterClient } from "./client.js";
import type { DiscoverOptions, ServiceView } from "./discovery.js";
import type { Instance } from "./types.js";

type GrpcModule = Pick<typeof grpc, "experimental" | "status" | "Metadata">;

/**
 * Make `muster:///<service>` targets resolve through `client` in grpc-js channels: the
 * channel gets the service's instances from a live view and every change of them, and
 * balances with its own policy (set `round_robin` in the service config to spread calls).
 * grpc-js is passed in so the SDK does not depend on it.
 */
export function registerMusterResolver(
  grpcModule: GrpcModule,
  client: MusterClient,
  options: DiscoverOptions = {},
): void {
  const { experimental, status, Metadata } = grpcModule;

  class MusterResolver implements grpc.experimental.Resolver {
    private view: ServiceView | null = null;
    private readonly service: string;

    constructor(
      target: GrpcUri,
      private readonly listener: grpc.experimental.ResolverListener,
    ) {
      this.service = target.path.replace(/^\//, "");
    }

    static getDefaultAuthority(target: GrpcUri): string {
      return target.path.replace(/^\//, "");
    }

    updateResolution(): void {
      if (this.view === null) {
        this.view = client.discover(this.service, options);
        this.view.on("change", (instances: readonly Instance[]) => this.report(instances));
        void this.view.ready().then(
          (instances) => this.report(instances),
          () => undefined,
        );
        return;
      }
      const view = this.view;
      if (view.index > 0 || view.instances.length > 0)
        process.nextTick(() => this.report(view.instances));
    }

    destroy(): void {
      this.view?.close();
      this.view = null;
    }

    private report(instances: readonly Instance[]): void {
      if (instances.length === 0) {
        this.listener(
          experimental.statusOrFromError({
            code: status.UNAVAILABLE,
            details: `no healthy instance of service ${this.service}`,
            metadata: new Metadata(),
          }),
          {},
          null,
          "",
        );
        return;
      }
      const endpoints = instances.map((instance) => ({
        addresses: [{ host: instance.address, port: instance.port }],
      }));
      this.listener(experimental.statusOrFromValue(endpoints), {}, null, "");
    }
  }

  experimental.registerResolver("muster", MusterResolver);
}
