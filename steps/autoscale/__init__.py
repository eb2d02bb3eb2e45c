"""The autoscale-test stage: staged load, samplers, timeline, milestones, expectations; HPA simulator."""
