# muster agent image: build with the dev toolchain, run on a slim Node 20 with only
# production dependencies, as the unprivileged "node" user, data in /data.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY raft ./raft
COPY dns ./dns
COPY server ./server
RUN npx tsc -p tsconfig.json --outDir dist \
    && cp -r proto dist/ \
    && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
RUN mkdir -p /data && chown node:node /data
# Every flag of `muster agent` reads MUSTER_<FLAG>; the node id, peers and addresses are
# set per container (see docker-compose.yml).
ENV NODE_ENV=production \
    MUSTER_DATA_DIR=/data \
    MUSTER_LOG_LEVEL=info
USER node
VOLUME ["/data"]
EXPOSE 7700/tcp 7701/tcp 7702/tcp 7753/tcp 7753/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch(`http://${process.env.MUSTER_HTTP}/readyz`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/server/cli.js"]
CMD ["agent"]
