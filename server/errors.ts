/** The one catalogue of muster's errors: stable codes, each with its HTTP status. */
export const errorCodes = {
  MUSTER_ERR_BAD_REQUEST: 400,
  MUSTER_ERR_PERMISSION_DENIED: 403,
  MUSTER_ERR_NOT_FOUND: 404,
  MUSTER_ERR_CONFLICT: 409,
  MUSTER_ERR_BODY_TOO_LARGE: 413,
  MUSTER_ERR_TOO_MANY_REQUESTS: 429,
  MUSTER_ERR_NO_LEADER: 503,
  MUSTER_ERR_TIMEOUT: 503,
  MUSTER_ERR_OVERLOADED: 503,
} as const;

export type ErrorCode = keyof typeof errorCodes;

export class MusterError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly field?: string,
    /** For a denial: the permission the token lacks, like "service:db write". */
    readonly permission?: string,
  ) {
    super(message);
    this.name = "MusterError";
  }

  get status(): number {
    return errorCodes[this.code];
  }

  toJSON(): {
    error: { code: ErrorCode; message: string; field?: string; permission?: string };
  } {
    return {
      error: {
        code: this.code,
        message: this.message,
        ...(this.field === undefined ? {} : { field: this.field }),
        ...(this.permission === undefined ? {} : { permission: this.permission }),
      },
    };
  }
}
