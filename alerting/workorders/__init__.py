"""Work orders (工单): grids, dispatch, field milestones with deadlines, verification, closure and figures."""
