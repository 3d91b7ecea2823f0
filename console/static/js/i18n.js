// Chinese (default) and English strings, and time formatting in the configured zone.
const zh = {
  username: "用户名", password: "口令 (API 令牌)", login: "登录", logout: "退出", bad_login: "用户名或口令错误",
  nav_board: "告警", nav_map: "地图", nav_devices: "设备", nav_duty: "值班", nav_figures: "统计", nav_silences: "静默与维护",
  nav_audit: "审计",
  live_on: "实时连接正常", live_off: "实时连接中断, 正在重连…", sound_on: "声音提示: 开", sound_off: "声音提示: 关",
  sound_blocked: "点击页面任意处以启用声音",
  sev_critical: "紧急", sev_major: "重要", sev_warning: "一般", sev_info: "提示",
  st_firing: "未确认", st_acknowledged: "处理中", st_resolved: "已关闭",
  tab_open: "未关闭", tab_firing: "未确认", tab_acknowledged: "处理中", tab_resolved: "已关闭", tab_all: "全部",
  all: "全部", industry: "行业", site: "站点", severity: "级别", status: "状态", unit: "责任单位", kind: "设备类型",
  device: "设备", search: "搜索 (摘要/设备/编号)", sort: "排序", sort_newest: "最新优先", sort_oldest: "最早优先",
  sort_severity: "级别优先", sort_deadline: "时限优先",
  started: "发生时间", summary: "告警内容", assignee: "处理人", deadline: "时限", actions: "操作",
  ack: "确认", assign: "指派", comment: "备注", resolve: "关闭", silence: "静默", detail: "详情",
  prev: "上一页", next: "下一页", of: "共", rows: "条",
  banner_critical: "紧急告警待确认", banner_more: "另有 {n} 条",
  overdue: "已超时", due_in: "剩余", ack_by: "确认时限", resolve_by: "办结时限",
  note: "说明", reason: "关闭原因 (必填)", text: "备注内容", person: "人员", duration: "时长", minutes: "分钟",
  scope: "范围", scope_rule_device: "本设备的同类告警", scope_device: "本设备全部告警", scope_rule: "所有设备的同类告警",
  ok: "确定", cancel: "取消", saved: "已保存", failed: "操作失败",
  timeline: "处理过程", notifications: "通知记录", evidence: "现场快照", chart: "设备数据曲线", place: "位置",
  rule: "触发规则", why: "触发原因 (越限数值)", labels: "标签", values_at_alert: "告警时设备状态",
  no_snapshot: "无图片快照", no_data: "暂无数据", recipient: "接收人", channel: "渠道", outcome: "结果", attempts: "尝试",
  act_created: "告警产生", act_acknowledged: "已确认", act_assigned: "已指派", act_commented: "备注", act_closed: "已关闭",
  act_resolved: "已恢复", act_reopened: "再次触发", act_escalated: "升级通知", act_severity_changed: "级别变更",
  act_ack_overdue: "确认超时", act_resolve_overdue: "办结超时", notified: "通知",
  n_sent: "已送达", n_dead: "失败", n_pending: "待发送", n_sending: "发送中", n_digested: "已合并",
  devices_total: "设备总数", online: "在线", offline: "离线", last_seen: "最后上报", values: "当前数据",
  open_alerts: "未关闭告警", history: "历史告警", window: "时间范围", metric: "指标",
  on_duty_now: "当前值班", rosters: "排班表", upcoming: "后续班次", overrides: "临时替班", escalations: "升级中的告警",
  add_override: "添加替班", roster: "排班", from: "开始", to: "结束", role: "岗位", members: "成员", step: "步骤",
  no_permission: "无权限",
  today: "今日", period: "统计周期", days: "天", total: "告警总数", closed: "已办结", closure_rate: "办结率",
  on_time_rate: "按时办结率", mtta: "平均确认时长", mttr: "平均办结时长", by_industry: "按行业", by_site: "按站点",
  by_unit: "按责任单位", daily: "每日告警数",
  silences: "静默规则", maintenance: "维护窗口", create_silence: "新建静默", matchers: "匹配条件 (每行一条, 如 site=cuiyuan-3)",
  active: "生效中", scheduled: "未开始", expire: "立即失效", author: "创建人", ends: "结束时间", comment_col: "说明",
  weekdays: "星期", start: "开始", layers: "图层", sites: "站点", tracks: "轨迹", geofences: "电子围栏", routes: "线路",
  alerts_layer: "告警", devices_layer: "设备", fit: "全图",
  audit: "操作审计", time: "时间", user: "用户", action: "操作", target: "对象", result: "结果",
  confirm_resolve: "关闭告警", new_alert: "新告警", state_changed: "告警状态已更新",
  starts_in: "多少分钟后开始 (0 为立即; 维护窗口可预约)",
};
const en = {
  username: "User name", password: "Password (API token)", login: "Log in", logout: "Log out", bad_login: "Wrong user name or password",
  nav_board: "Alerts", nav_map: "Map", nav_devices: "Devices", nav_duty: "Duty", nav_figures: "Figures", nav_silences: "Silences",
  nav_audit: "Audit",
  live_on: "Live", live_off: "Live connection lost, reconnecting…", sound_on: "Sound: on", sound_off: "Sound: off",
  sound_blocked: "Click anywhere to enable sound",
  sev_critical: "Critical", sev_major: "Major", sev_warning: "Warning", sev_info: "Info",
  st_firing: "Firing", st_acknowledged: "Acknowledged", st_resolved: "Resolved",
  tab_open: "Open", tab_firing: "Firing", tab_acknowledged: "Acknowledged", tab_resolved: "Resolved", tab_all: "All",
  all: "All", industry: "Industry", site: "Site", severity: "Severity", status: "Status", unit: "Unit", kind: "Kind",
  device: "Device", search: "Search (summary/device/id)", sort: "Sort", sort_newest: "Newest", sort_oldest: "Oldest",
  sort_severity: "Severity", sort_deadline: "Deadline",
  started: "Started", summary: "Summary", assignee: "Handler", deadline: "Deadline", actions: "Actions",
  ack: "Ack", assign: "Assign", comment: "Comment", resolve: "Resolve", silence: "Silence", detail: "Detail",
  prev: "Previous", next: "Next", of: "of", rows: "",
  banner_critical: "Critical alert awaiting acknowledgement", banner_more: "{n} more",
  overdue: "overdue", due_in: "due in", ack_by: "Acknowledge by", resolve_by: "Resolve by",
  note: "Note", reason: "Reason (required)", text: "Comment", person: "Person", duration: "Duration", minutes: "min",
  scope: "Scope", scope_rule_device: "This rule on this device", scope_device: "Everything from this device", scope_rule: "This rule on all devices",
  ok: "OK", cancel: "Cancel", saved: "Saved", failed: "Failed",
  timeline: "Timeline", notifications: "Notifications", evidence: "Evidence snapshot", chart: "Device telemetry", place: "Location",
  rule: "Rule", why: "Why (values that crossed)", labels: "Labels", values_at_alert: "Device state when raised",
  no_snapshot: "No image", no_data: "No data", recipient: "Recipient", channel: "Channel", outcome: "Outcome", attempts: "Attempts",
  act_created: "Raised", act_acknowledged: "Acknowledged", act_assigned: "Assigned", act_commented: "Comment", act_closed: "Closed",
  act_resolved: "Recovered", act_reopened: "Re-fired", act_escalated: "Escalated", act_severity_changed: "Severity changed",
  act_ack_overdue: "Acknowledge overdue", act_resolve_overdue: "Resolve overdue", notified: "Notified",
  n_sent: "delivered", n_dead: "failed", n_pending: "pending", n_sending: "sending", n_digested: "digested",
  devices_total: "Devices", online: "Online", offline: "Offline", last_seen: "Last seen", values: "Current values",
  open_alerts: "Open alerts", history: "Alert history", window: "Window", metric: "Metric",
  on_duty_now: "On duty now", rosters: "Rosters", upcoming: "Next shifts", overrides: "Cover", escalations: "Escalations in progress",
  add_override: "Add cover", roster: "Roster", from: "From", to: "To", role: "Role", members: "Members", step: "Step",
  no_permission: "Not permitted",
  today: "Today", period: "Period", days: "days", total: "Alerts", closed: "Closed", closure_rate: "Closure rate",
  on_time_rate: "On-time rate", mtta: "Mean time to acknowledge", mttr: "Mean time to resolve", by_industry: "By industry", by_site: "By site",
  by_unit: "By unit", daily: "Alerts per day",
  silences: "Silences", maintenance: "Maintenance windows", create_silence: "New silence", matchers: "Matchers (one per line, e.g. site=cuiyuan-3)",
  active: "active", scheduled: "scheduled", expire: "Expire now", author: "Author", ends: "Ends", comment_col: "Comment",
  weekdays: "Weekdays", start: "Start", layers: "Layers", sites: "Sites", tracks: "Tracks", geofences: "Geofences", routes: "Routes",
  alerts_layer: "Alerts", devices_layer: "Devices", fit: "Fit",
  audit: "Audit", time: "Time", user: "User", action: "Action", target: "Target", result: "Result",
  confirm_resolve: "Resolve alert", new_alert: "New alert", state_changed: "Alert updated",
  starts_in: "Starts in minutes (0 = now; schedule maintenance ahead)",
};
const dicts = { zh, en };
let locale = localStorage.getItem("vigil.locale") || "zh";
let zone = "Asia/Shanghai";
let fmt = null;

export function setup(defaultLocale, timezone) {
  if (!localStorage.getItem("vigil.locale")) locale = defaultLocale;
  zone = timezone;
  fmt = null;
}
export function getLocale() { return locale; }
export function setLocale(l) { locale = l; localStorage.setItem("vigil.locale", l); fmt = null; }
export function t(key, vars) {
  let s = (dicts[locale] && dicts[locale][key]) ?? zh[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replace(`{${k}}`, v);
  return s;
}
export function sev(s) { return t("sev_" + s); }
export function st(s) { return t("st_" + s); }
export function fmtTime(ts, withDate = true) {
  if (ts === null || ts === undefined || ts === "") return "";
  const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
  if (!fmt) {
    const lang = locale === "zh" ? "zh-CN" : "en-GB";
    fmt = {
      full: new Intl.DateTimeFormat(lang, { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }),
      time: new Intl.DateTimeFormat(lang, { timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }),
    };
  }
  return (withDate ? fmt.full : fmt.time).format(d);
}
export function toEpoch(ts) {
  if (ts === null || ts === undefined) return null;
  return typeof ts === "number" ? ts : Date.parse(ts) / 1000;
}
export function fmtDur(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.abs(Math.round(seconds));
  const zhl = locale === "zh";
  if (s < 60) return s + (zhl ? " 秒" : " s");
  if (s < 3600) return Math.floor(s / 60) + (zhl ? " 分 " : " min ") + (s % 60) + (zhl ? " 秒" : " s");
  if (s < 86400) return Math.floor(s / 3600) + (zhl ? " 小时 " : " h ") + Math.floor((s % 3600) / 60) + (zhl ? " 分" : " min");
  return Math.floor(s / 86400) + (zhl ? " 天 " : " d ") + Math.floor((s % 86400) / 3600) + (zhl ? " 小时" : " h");
}
export function fmtPct(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%"; }
export function summaryOf(a) { return locale === "en" && a.summary_en ? a.summary_en : a.summary; }
export function timeZone() { return zone; }
