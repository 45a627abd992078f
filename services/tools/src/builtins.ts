import { CallControl, CallControl_Action } from "@voicebot/proto";
import { normalizeOrderNumber, spokenDate, type OrderSource } from "./orders.js";
import { InvalidArgumentsError, optionalString, type Tool } from "./tool.js";

export interface BuiltinDependencies {
  orders: OrderSource;
  /** Publishes a CallControl on the call's control subject (a hang-up or transfer is also kept in the call's state). */
  control(callId: string, message: CallControl): Promise<void>;
  /** Where transfer_to_human sends the caller when the request names no target. */
  transferTarget: string;
  /** If non-empty, the only targets a request may name (the default target is always allowed). */
  allowedTransferTargets: readonly string[];
}

const MAX_ORDER_DIGITS = 20;
const MAX_DTMF_DIGITS = 32;
// Keypad tones; w/W are the half-second/one-second pauses Twilio understands in sendDigits.
const DTMF = /^[0-9*#wW]+$/;
// A phone number in E.164 form or a SIP URI: what a telephony provider can dial.
const TRANSFER_TARGET = /^(\+[1-9]\d{6,14}|sips?:[^\s@]+@[^\s]+)$/;

export function isDialableTarget(target: string): boolean {
  return TRANSFER_TARGET.test(target);
}

export const BUILTIN_TOOL_NAMES = ["lookup_order", "end_call", "transfer_to_human", "send_dtmf"] as const;

export function builtinTools(deps: BuiltinDependencies): Tool[] {
  const lookupOrder: Tool = {
    name: "lookup_order",
    defaultTimeoutMs: 3_000,
    idempotent: true,
    async run(args, ctx) {
      const raw = optionalString(args, "order_number", 100);
      if (raw === undefined) throw new InvalidArgumentsError("order_number is required");
      const orderNumber = normalizeOrderNumber(raw);
      if (!orderNumber) throw new InvalidArgumentsError(`order_number ${JSON.stringify(raw)} has no digits`);
      if (orderNumber.length > MAX_ORDER_DIGITS) throw new InvalidArgumentsError(`order_number has more than ${MAX_ORDER_DIGITS} digits`);
      const order = await deps.orders.findOrder(orderNumber, ctx.signal);
      if (!order) return { found: false, order_number: orderNumber };
      return {
        found: true,
        order_number: order.orderNumber,
        status: order.status,
        ...(order.carrier ? { carrier: order.carrier } : {}),
        ...(order.trackingNumber ? { tracking_number: order.trackingNumber } : {}),
        // A date the database holds in another form is passed on as it is, without the words for it.
        ...(order.etaDate ? { eta: order.etaDate, ...withText("eta_text", order.etaDate) } : {}),
        ...(order.deliveredDate ? { delivered_on: order.deliveredDate, ...withText("delivered_text", order.deliveredDate) } : {}),
        ...(order.items ? { items: order.items } : {}),
      };
    },
  };

  const endCall: Tool = {
    name: "end_call",
    defaultTimeoutMs: 2_000,
    async run(args, ctx) {
      const reason = optionalString(args, "reason", 200) ?? "bot ended the call";
      await deps.control(
        ctx.callId,
        CallControl.create({ callId: ctx.callId, action: CallControl_Action.ACTION_HANGUP, afterTurnId: ctx.turnId, reason }),
      );
      return { action: "hangup", after_turn_id: ctx.turnId };
    },
  };

  const transferToHuman: Tool = {
    name: "transfer_to_human",
    defaultTimeoutMs: 2_000,
    async run(args, ctx) {
      const reason = optionalString(args, "reason", 200) ?? "caller asked for a person";
      const requested = optionalString(args, "target", 200);
      const target = requested ?? deps.transferTarget;
      if (!isDialableTarget(target)) throw new InvalidArgumentsError(`target ${JSON.stringify(target)} is not an E.164 number or SIP URI`);
      // A caller can steer what an agent asks for ("transfer me to +88..."): only configured numbers may be dialled,
      // TRANSFER_TARGET and those TRANSFER_ALLOWED_TARGETS lists (none by default: a model-chosen number is toll fraud).
      if (requested && requested !== deps.transferTarget && !deps.allowedTransferTargets.includes(requested)) {
        throw new InvalidArgumentsError(`target ${JSON.stringify(requested)} is not an allowed transfer target`);
      }
      await deps.control(
        ctx.callId,
        CallControl.create({ callId: ctx.callId, action: CallControl_Action.ACTION_TRANSFER, afterTurnId: ctx.turnId, reason, target }),
      );
      return { action: "transfer", target, after_turn_id: ctx.turnId };
    },
  };

  const sendDtmf: Tool = {
    name: "send_dtmf",
    defaultTimeoutMs: 2_000,
    async run(args, ctx) {
      const digits = optionalString(args, "digits", MAX_DTMF_DIGITS);
      if (digits === undefined) throw new InvalidArgumentsError("digits is required");
      if (!DTMF.test(digits)) throw new InvalidArgumentsError(`digits may only hold 0-9, *, #, and w or W (a pause)`);
      await deps.control(
        ctx.callId,
        CallControl.create({ callId: ctx.callId, action: CallControl_Action.ACTION_SEND_DTMF, afterTurnId: ctx.turnId, target: digits, reason: "send_dtmf" }),
      );
      return { action: "send_dtmf", digits, after_turn_id: ctx.turnId };
    },
  };
  return [lookupOrder, endCall, transferToHuman, sendDtmf];
}

/** `{ [field]: "Thursday, March 6" }` for a calendar date, `{}` for anything else. */
function withText(field: string, date: string): Record<string, string> {
  const text = spokenDate(date);
  return text ? { [field]: text } : {};
}
